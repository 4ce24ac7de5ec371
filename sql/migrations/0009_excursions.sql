-- 0009 — excursion spans: out-of-range time materialised once, on both storage paths.
--
-- A lot trace asks, for every compartment the lot sat in, how many minutes it was out of range.
-- Answered from the readings, that is a scan of every reading around every excursion of every
-- holder, each time; answered from here, it is a sum over a few rows per excursion.
--
-- The rule (the same as inventory.trace.out_of_range_minutes, which stays the reference):
--   * a reading holds until the probe's next reading, for at most 30 minutes, and not past the
--     end of the binding it was read under;
--   * it is out of range when above the compartment's t_max or below its t_min (on a limit is in
--     range), judged by the compartment the probe was bound to at the reading's time;
--   * a span is a run of consecutive out-of-range readings of one probe and binding whose holds
--     touch; a silence longer than 30 minutes ends it (silence is the no-data alarm's business).
--
-- Materialisation, as for the aggregates (one mechanism, the same on PostgreSQL and TimescaleDB):
--   * excursion_state.materialized_until — the spans of every reading before it are stored;
--     a trace adds the spans of later readings, computed live by cc_excursion_spans().
--   * excursion_threshold — readings inserted or changed below it are logged per probe in
--     excursion_invalidations, and that probe's spans from there on are recomputed at the next
--     refresh. The refresh raises the threshold in its own transaction first (it waits for the
--     writers holding the old one FOR SHARE), then materialises up to 30 minutes before it: a
--     reading's hold is known once every reading up to 30 minutes after it is known.
--   * The threshold stays two hours behind the refresh time. On plain PostgreSQL the logging is a
--     statement trigger (as for the aggregates); TimescaleDB refuses transition tables on
--     hypertables, so there it is a row trigger that fires only for readings over an hour old —
--     a current reading costs the WHEN test and nothing else, and a reading escapes both only if
--     its writer's transaction stays open for over an hour.
--   * Binding changes and limit changes log the probes concerned from the first moment affected,
--     so history is judged by the compartment's current limits (as the trace always did).
--   * Deleting readings (retention) leaves the spans alone; a recomputation never starts before a
--     probe's oldest kept reading.

CREATE TABLE excursion_spans (
    probe_id       bigint NOT NULL,
    compartment_id bigint NOT NULL,
    started_at     timestamptz NOT NULL,
    ended_at       timestamptz NOT NULL,
    readings       integer NOT NULL,
    min_t          double precision NOT NULL,
    max_t          double precision NOT NULL,
    PRIMARY KEY (probe_id, started_at),
    CHECK (ended_at > started_at)
);
CREATE INDEX excursion_spans_compartment_idx ON excursion_spans (compartment_id, ended_at);
-- Each refresh looks, per probe, for the spans ending at or after where it starts again: without
-- this, every probe's whole history of spans would be read at every refresh.
CREATE INDEX excursion_spans_probe_end_idx ON excursion_spans (probe_id, ended_at);
COMMENT ON TABLE excursion_spans IS
    '超温时段（物化）：探头连续超出所在温区上下限的时段；每条读数代表到下一条读数为止（最长 30 分钟）。'
    '刷新边界处同一次超温可能分成首尾相接的两段';
COMMENT ON COLUMN excursion_spans.compartment_id IS '读数时刻探头绑定的温区';
COMMENT ON COLUMN excursion_spans.started_at IS '第一条超限读数的时刻';
COMMENT ON COLUMN excursion_spans.ended_at IS '最后一条超限读数失效的时刻：下一条读数、30 分钟后或绑定结束，取最早';
COMMENT ON COLUMN excursion_spans.readings IS '时段内超限读数条数';
COMMENT ON COLUMN excursion_spans.min_t IS '时段内最低温度 ℃';
COMMENT ON COLUMN excursion_spans.max_t IS '时段内最高温度 ℃';

CREATE TABLE excursion_state (
    only_row           boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    materialized_until timestamptz NOT NULL DEFAULT '-infinity'
);
INSERT INTO excursion_state DEFAULT VALUES;
COMMENT ON TABLE excursion_state IS '超温时段的水位线：此前读数的超温时段均已物化';

CREATE TABLE excursion_threshold (
    only_row  boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    threshold timestamptz NOT NULL DEFAULT '-infinity'
);
INSERT INTO excursion_threshold DEFAULT VALUES;
COMMENT ON TABLE excursion_threshold IS '补传读数登记线：此前的读数写入或修改时登记到 excursion_invalidations';

CREATE TABLE excursion_invalidations (
    probe_id bigint NOT NULL,
    since    timestamptz NOT NULL
);
COMMENT ON TABLE excursion_invalidations IS '待重算超温时段的探头及起点（补传读数、绑定或上下限变更）';

-- The spans of the readings of each probe from its own start (p_froms, paired with p_probes) up
-- to p_to, recomputed from the readings. The reading after p_to, if any, ends the last hold.
CREATE FUNCTION cc_excursion_spans(p_probes bigint[], p_froms timestamptz[], p_to timestamptz)
RETURNS TABLE (probe_id bigint, compartment_id bigint, started_at timestamptz, ended_at timestamptz,
               readings integer, min_t double precision, max_t double precision)
LANGUAGE sql STABLE AS $fn$
    WITH ranges AS (
        SELECT * FROM unnest(p_probes, p_froms) AS x (probe_id, from_ts)
    ), raw AS (
        SELECT r.probe_id, r.ts, r.t, true AS inside
        FROM ranges x JOIN probe_readings r ON r.probe_id = x.probe_id AND r.ts >= x.from_ts AND r.ts < p_to
        UNION ALL
        SELECT x.probe_id, n.ts, n.t, false
        FROM ranges x CROSS JOIN LATERAL (
            SELECT ts, t FROM probe_readings
            WHERE probe_readings.probe_id = x.probe_id AND ts >= p_to ORDER BY ts LIMIT 1
        ) n
    ), held AS (
        SELECT raw.probe_id, raw.ts, raw.t, raw.inside, b.compartment_id,
               least(raw.ts + INTERVAL '30 minutes',
                     lead(raw.ts) OVER (PARTITION BY raw.probe_id ORDER BY raw.ts),
                     upper(b.valid)) AS hold_end,
               coalesce(raw.t > c.t_max OR raw.t < c.t_min, false) AS out_of_range
        FROM raw
        LEFT JOIN probe_bindings b ON b.probe_id = raw.probe_id AND b.valid @> raw.ts
        LEFT JOIN compartments c ON c.id = b.compartment_id
    ), joined AS (
        SELECT held.*,
               coalesce(lag(out_of_range) OVER w AND lag(compartment_id) OVER w = compartment_id
                        AND lag(hold_end) OVER w = ts, false) AS continues
        FROM held WHERE inside
        WINDOW w AS (PARTITION BY probe_id ORDER BY ts)
    ), islands AS (
        SELECT joined.*,
               count(*) FILTER (WHERE out_of_range AND NOT continues)
                   OVER (PARTITION BY probe_id ORDER BY ts) AS island
        FROM joined
    )
    SELECT probe_id, min(compartment_id), min(ts), max(hold_end), count(*)::integer, min(t), max(t)
    FROM islands WHERE out_of_range
    GROUP BY probe_id, island
$fn$;
COMMENT ON FUNCTION cc_excursion_spans(bigint[], timestamptz[], timestamptz) IS
    '由读数现算超温时段：各探头自各自起点至 p_to 的读数';

-- Step 1 of a refresh, in its own transaction.
CREATE FUNCTION cc_excursion_advance_threshold(p_until timestamptz) RETURNS timestamptz
LANGUAGE sql AS $fn$
    UPDATE excursion_threshold
    SET threshold = greatest(threshold, least(p_until, now()) - INTERVAL '2 hours')
    RETURNING threshold
$fn$;

-- Step 2: recompute the invalidated probes from their first invalid reading, and every probe's
-- new readings, for at most one day of readings past the watermark: a first run over years of
-- history (or a catch-up after a long stop) goes in steps that each commit, and the caller calls
-- again until caught_up.
CREATE FUNCTION cc_excursion_refresh(OUT spans bigint, OUT caught_up boolean)
LANGUAGE plpgsql AS $fn$
DECLARE
    th      timestamptz;
    old_mu  timestamptz;
    new_mu  timestamptz;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('coldchain.excursion_refresh'));
    SELECT threshold INTO th FROM excursion_threshold;
    SELECT materialized_until INTO old_mu FROM excursion_state;
    IF NOT isfinite(old_mu) THEN
        -- First run: from the oldest reading (there is nothing below it); with no readings at all,
        -- straight to the target (readings arriving later below it are logged as late).
        old_mu := coalesce((SELECT min(ts) FROM probe_readings), th - INTERVAL '30 minutes');
    END IF;
    new_mu := greatest(old_mu, least(th - INTERVAL '30 minutes', old_mu + INTERVAL '1 day'));
    caught_up := new_mu >= th - INTERVAL '30 minutes';

    -- Where each probe starts again: 30 minutes before its first changed reading (that reading's
    -- predecessor may hold into it), else the old watermark; never before its oldest reading.
    DROP TABLE IF EXISTS pg_temp._cc_exc_redo;  -- called again in the same transaction
    CREATE TEMP TABLE _cc_exc_redo ON COMMIT DROP AS
    WITH inv AS (DELETE FROM excursion_invalidations RETURNING probe_id, since),
    first_inv AS (SELECT probe_id, min(since) AS since FROM inv GROUP BY probe_id)
    SELECT p.id AS probe_id,
           CASE WHEN f.since IS NULL OR f.since - INTERVAL '30 minutes' >= old_mu THEN old_mu
                ELSE greatest(f.since - INTERVAL '30 minutes',
                              (SELECT min(r.ts) FROM probe_readings r WHERE r.probe_id = p.id))
           END AS lo
    FROM probes p LEFT JOIN first_inv f ON f.probe_id = p.id;
    DELETE FROM _cc_exc_redo WHERE lo IS NULL OR lo >= new_mu;

    -- Widen to the stored spans reaching that far (or touching it), which are recomputed whole.
    UPDATE _cc_exc_redo x SET lo = s.lo
    FROM (SELECT s.probe_id, min(s.started_at) AS lo
          FROM excursion_spans s JOIN _cc_exc_redo x ON x.probe_id = s.probe_id AND s.ended_at >= x.lo
          GROUP BY s.probe_id) s
    WHERE s.probe_id = x.probe_id AND s.lo < x.lo;
    DELETE FROM excursion_spans s USING _cc_exc_redo x WHERE s.probe_id = x.probe_id AND s.ended_at >= x.lo;

    INSERT INTO excursion_spans
    SELECT * FROM cc_excursion_spans(
        (SELECT array_agg(probe_id ORDER BY probe_id) FROM _cc_exc_redo),
        (SELECT array_agg(lo ORDER BY probe_id) FROM _cc_exc_redo),
        new_mu);
    GET DIAGNOSTICS spans = ROW_COUNT;
    UPDATE excursion_state SET materialized_until = new_mu;
END
$fn$;

-- Logging: readings written below the threshold. Plain PostgreSQL: statement triggers with
-- transition tables, as for the aggregates (a back-filled batch logs one row per probe).
-- TimescaleDB refuses transition tables on hypertables: row triggers there, firing only for
-- readings over an hour old.
CREATE FUNCTION cc_excursion_invalidate_readings() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    th timestamptz;
BEGIN
    SELECT threshold INTO th FROM excursion_threshold FOR SHARE;
    INSERT INTO excursion_invalidations (probe_id, since)
    SELECT probe_id, min(ts) FROM changed_rows WHERE ts < th GROUP BY probe_id;
    RETURN NULL;
END
$fn$;

CREATE FUNCTION cc_excursion_invalidate_reading() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    th timestamptz;
BEGIN
    SELECT threshold INTO th FROM excursion_threshold FOR SHARE;
    IF TG_OP = 'UPDATE' AND OLD.ts < th THEN
        INSERT INTO excursion_invalidations VALUES (OLD.probe_id, OLD.ts);
    END IF;
    IF NEW.ts < th THEN
        INSERT INTO excursion_invalidations VALUES (NEW.probe_id, NEW.ts);
    END IF;
    RETURN NULL;
END
$fn$;

DO $do$
BEGIN
    IF cc_timescaledb() THEN
        CREATE TRIGGER probe_readings_excursions_ins AFTER INSERT ON probe_readings
            FOR EACH ROW WHEN (NEW.ts < now() - INTERVAL '1 hour')
            EXECUTE FUNCTION cc_excursion_invalidate_reading();
        CREATE TRIGGER probe_readings_excursions_upd AFTER UPDATE ON probe_readings
            FOR EACH ROW WHEN (OLD.ts < now() - INTERVAL '1 hour' OR NEW.ts < now() - INTERVAL '1 hour')
            EXECUTE FUNCTION cc_excursion_invalidate_reading();
    ELSE
        CREATE TRIGGER probe_readings_excursions_ins AFTER INSERT ON probe_readings
            REFERENCING NEW TABLE AS changed_rows
            FOR EACH STATEMENT EXECUTE FUNCTION cc_excursion_invalidate_readings();
        CREATE TRIGGER probe_readings_excursions_upd_old AFTER UPDATE ON probe_readings
            REFERENCING OLD TABLE AS changed_rows
            FOR EACH STATEMENT EXECUTE FUNCTION cc_excursion_invalidate_readings();
        CREATE TRIGGER probe_readings_excursions_upd_new AFTER UPDATE ON probe_readings
            REFERENCING NEW TABLE AS changed_rows
            FOR EACH STATEMENT EXECUTE FUNCTION cc_excursion_invalidate_readings();
    END IF;
END
$do$;

-- Logging: a binding's probe from the first moment its attribution changed.
CREATE FUNCTION cc_excursion_invalidate_binding() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO excursion_invalidations VALUES (NEW.probe_id, lower(NEW.valid));
    ELSIF OLD.probe_id <> NEW.probe_id OR OLD.compartment_id <> NEW.compartment_id
          OR lower(OLD.valid) <> lower(NEW.valid) THEN
        INSERT INTO excursion_invalidations
        VALUES (OLD.probe_id, lower(OLD.valid)), (NEW.probe_id, lower(NEW.valid));
    ELSIF OLD.valid <> NEW.valid THEN
        -- Only the end moved: from the earlier of the two ends.
        INSERT INTO excursion_invalidations
        VALUES (NEW.probe_id, least(coalesce(upper(OLD.valid), 'infinity'), coalesce(upper(NEW.valid), 'infinity')));
    END IF;
    RETURN NULL;
END
$fn$;

CREATE TRIGGER probe_bindings_excursions AFTER INSERT OR UPDATE ON probe_bindings
    FOR EACH ROW EXECUTE FUNCTION cc_excursion_invalidate_binding();

-- Logging: every probe ever bound to a compartment whose limits changed, from its binding's start.
CREATE FUNCTION cc_excursion_invalidate_limits() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    INSERT INTO excursion_invalidations
    SELECT probe_id, lower(valid) FROM probe_bindings WHERE compartment_id = NEW.id;
    RETURN NULL;
END
$fn$;

CREATE TRIGGER compartments_excursions AFTER UPDATE OF t_min, t_max ON compartments
    FOR EACH ROW WHEN (OLD.t_min IS DISTINCT FROM NEW.t_min OR OLD.t_max IS DISTINCT FROM NEW.t_max)
    EXECUTE FUNCTION cc_excursion_invalidate_limits();

-- ---------------------------------------------------------------------------------------------
-- For analysts (scoped as every view of 0007): the materialised spans with their compartment,
-- equipment and unit. Spans of the last ~2.5 hours are not there yet; the trace adds them live.
CREATE VIEW analytics.excursions WITH (security_barrier) AS
SELECT x.started_at, x.ended_at, extract(epoch FROM x.ended_at - x.started_at)::float8 / 60 AS minutes,
       x.readings, x.min_t, x.max_t,
       x.probe_id, p.serial AS probe_serial,
       x.compartment_id, c.name AS compartment_name, c.mode, c.t_min, c.t_max,
       c.equipment_id, e.name AS equipment_name,
       e.unit_id, u.code AS unit_code, u.name AS unit_name
FROM excursion_spans x
JOIN probes p ON p.id = x.probe_id
JOIN compartments c ON c.id = x.compartment_id
JOIN equipment e ON e.id = c.equipment_id
JOIN units u ON u.id = e.unit_id
WHERE e.unit_id IN (SELECT unit_id FROM cc_analyst_units);
COMMENT ON VIEW analytics.excursions IS
    '超温时段：探头连续超出所在温区上下限的时段（每条读数代表到下一条为止，最长 30 分钟）；'
    '只含已物化部分（约至刷新时刻前 2.5 小时），刷新边界处一次超温可能分成首尾相接的两段（excursions）';
COMMENT ON COLUMN analytics.excursions.started_at IS '第一条超限读数的时刻';
COMMENT ON COLUMN analytics.excursions.ended_at IS '最后一条超限读数失效的时刻：下一条读数、30 分钟后或绑定结束，取最早';
COMMENT ON COLUMN analytics.excursions.minutes IS '超温分钟数（ended_at − started_at）';
COMMENT ON COLUMN analytics.excursions.readings IS '时段内超限读数条数';
COMMENT ON COLUMN analytics.excursions.min_t IS '时段内最低温度 ℃';
COMMENT ON COLUMN analytics.excursions.max_t IS '时段内最高温度 ℃';
COMMENT ON COLUMN analytics.excursions.probe_id IS '探头 id';
COMMENT ON COLUMN analytics.excursions.probe_serial IS '探头编码';
COMMENT ON COLUMN analytics.excursions.compartment_id IS '读数时刻探头绑定的温区 id';
COMMENT ON COLUMN analytics.excursions.compartment_name IS '温区名称';
COMMENT ON COLUMN analytics.excursions.mode IS '温区类型：refrigerated 冷藏 / frozen 冷冻';
COMMENT ON COLUMN analytics.excursions.t_min IS '温区当前下限 ℃（超温按此判断；冷冻温区可为空）';
COMMENT ON COLUMN analytics.excursions.t_max IS '温区当前上限 ℃（超温按此判断）';
COMMENT ON COLUMN analytics.excursions.equipment_id IS '冷链设备 id';
COMMENT ON COLUMN analytics.excursions.equipment_name IS '设备名称';
COMMENT ON COLUMN analytics.excursions.unit_id IS '单位 id';
COMMENT ON COLUMN analytics.excursions.unit_code IS '单位编码（10 位）';
COMMENT ON COLUMN analytics.excursions.unit_name IS '单位名称';
GRANT SELECT ON analytics.excursions TO coldchain_analyst;
