-- 0010 — temperature records are append-only (GSP: 温度记录不得修改、删除; issue #15).
--
-- Probe readings, gateway status and thermometer readings are never updated or deleted, by any
-- role: the runtime role has no UPDATE / DELETE / TRUNCATE privilege on them (0012), and these
-- triggers stop the owner's hand in psql too. A wrong thermometer entry is corrected by a new row
-- that references it (corrects_id) with a reason and who entered it; both stay in the history.
-- Removal is only by retention after the legal period (疫苗管理法 第三十七条: at least five years
-- after the vaccine's expiry; 8 years kept): on TimescaleDB the retention policy drops whole
-- chunks (no row is deleted, no trigger fires); on plain PostgreSQL cc_retention_purge(), which
-- only the owner may run, deletes rows older than that, the one DELETE these triggers let through.

CREATE FUNCTION cc_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('coldchain.retention_purge', true) = 'on' THEN
        RETURN OLD;
    END IF;
    -- TG_ARGV[0]: the table's own name (on a hypertable TG_TABLE_NAME is the chunk's).
    RAISE EXCEPTION '% 是只可追加的记录，不能%', coalesce(TG_ARGV[0], TG_TABLE_NAME),
        CASE TG_OP WHEN 'DELETE' THEN '删除' WHEN 'TRUNCATE' THEN '清空' ELSE '修改' END
        USING ERRCODE = 'restrict_violation',
              HINT = '温度记录一经保存不可更改；录错的温度计读数请录入一条更正记录（引用原记录并说明原因）';
END
$$;
COMMENT ON FUNCTION cc_append_only() IS '只可追加的记录：拒绝修改、删除、清空（保留期满的清理除外）';

DO $do$
DECLARE
    t text;
BEGIN
    -- Row triggers cost nothing on insert (they fire on UPDATE and DELETE only); TimescaleDB fires
    -- them on the chunks and fires the TRUNCATE trigger on the hypertable (seen in the oracle).
    FOREACH t IN ARRAY ARRAY['probe_readings', 'gateway_status', 'thermometer_readings'] LOOP
        EXECUTE format('CREATE TRIGGER %I BEFORE UPDATE OR DELETE ON %I FOR EACH ROW EXECUTE FUNCTION cc_append_only(%L)',
                       t || '_append_only', t, t);
        EXECUTE format('CREATE TRIGGER %I BEFORE TRUNCATE ON %I FOR EACH STATEMENT EXECUTE FUNCTION cc_append_only(%L)',
                       t || '_no_truncate', t, t);
    END LOOP;
    -- thermometer_readings already refused DELETE (0005); the trigger above says it better.
    DROP TRIGGER thermometer_readings_no_delete ON thermometer_readings;
    -- Readings can no longer change, so the triggers that logged changed readings for the
    -- aggregates and the excursion spans have nothing left to log.
    DROP TRIGGER IF EXISTS probe_readings_invalidate_upd_old ON probe_readings;
    DROP TRIGGER IF EXISTS probe_readings_invalidate_upd_new ON probe_readings;
    DROP TRIGGER IF EXISTS probe_readings_excursions_upd ON probe_readings;
    DROP TRIGGER IF EXISTS probe_readings_excursions_upd_old ON probe_readings;
    DROP TRIGGER IF EXISTS probe_readings_excursions_upd_new ON probe_readings;
END
$do$;

-- Corrections of manual thermometer readings (CM13): a new row pointing at the one it corrects.
ALTER TABLE thermometer_readings
    ADD COLUMN corrects_id bigint REFERENCES thermometer_readings (id),
    ADD COLUMN reason text,
    ADD CONSTRAINT thermometer_readings_correction_reason
        CHECK ((corrects_id IS NULL) = (reason IS NULL) AND (reason IS NULL OR length(btrim(reason)) > 0));
-- A reading is corrected at most once; a correction can itself be corrected (a chain).
CREATE UNIQUE INDEX thermometer_readings_corrects_idx ON thermometer_readings (corrects_id);
COMMENT ON COLUMN thermometer_readings.corrects_id IS '更正记录：被更正的原读数 id（原读数保留）';
COMMENT ON COLUMN thermometer_readings.reason IS '更正原因（更正记录必填）';
COMMENT ON COLUMN thermometer_readings.entered_by IS '录入人（更正记录为更正人）';

CREATE VIEW thermometer_readings_current AS
SELECT r.*
FROM thermometer_readings r
WHERE NOT EXISTS (SELECT 1 FROM thermometer_readings c WHERE c.corrects_id = r.id);
COMMENT ON VIEW thermometer_readings_current IS '有效的温度计读数：未被更正的原读数与最新的更正记录';

-- Retention on plain PostgreSQL (TimescaleDB: add_retention_policy in 0002, the same 8 years).
CREATE FUNCTION cc_retention_purge(p_keep interval DEFAULT INTERVAL '8 years',
                                   OUT readings bigint, OUT statuses bigint)
LANGUAGE plpgsql AS $$
BEGIN
    IF p_keep < INTERVAL '5 years' THEN
        RAISE EXCEPTION '保留期不得短于 5 年（疫苗管理法 第三十七条）' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM set_config('coldchain.retention_purge', 'on', true);
    DELETE FROM probe_readings WHERE ts < now() - p_keep;
    GET DIAGNOSTICS readings = ROW_COUNT;
    DELETE FROM gateway_status WHERE ts < now() - p_keep;
    GET DIAGNOSTICS statuses = ROW_COUNT;
    PERFORM set_config('coldchain.retention_purge', 'off', true);
END
$$;
REVOKE EXECUTE ON FUNCTION cc_retention_purge(interval) FROM PUBLIC;
COMMENT ON FUNCTION cc_retention_purge(interval) IS
    '普通 PostgreSQL 路径的保留期清理（仅属主角色可执行）：删除早于保留期（默认 8 年、不少于 5 年）的探头读数和网关状态';
