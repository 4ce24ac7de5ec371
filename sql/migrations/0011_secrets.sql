-- 0011 — no secret in the audit log (issue #15).
--
-- The audit trigger copied whole rows into audit_log, so GET /audit showed a unit's webhook HMAC
-- secret and the key inside its WeCom robot URL. From now on, as password hashes already are,
-- secrets never reach audit_log: in every audited row, a column named `secret` or `*_secret` is
-- replaced by `has_<column>` (whether one is set) and, on an update that changes it,
-- `<column>_changed: true`; in a column named `url` or `*_url` every query value is masked
-- (`…/send?key=***`, as coldchain/outbound.py mask_url shows URLs), the user and password of
-- the address are dropped, and so is its fragment.
--
-- The rows written before this migration are redacted the same way, once, here: the one update
-- audit_log ever gets (its update trigger is suspended for this statement only).
--
-- Replacing the function resets its attributes; whatever security setting it had (a later
-- migration makes it SECURITY DEFINER) is put back, so this file runs in any order after 0005.

CREATE FUNCTION cc_audit_redact(row_j jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    k   text;
    v   jsonb;
    out jsonb := row_j;
BEGIN
    IF row_j IS NULL OR jsonb_typeof(row_j) <> 'object' THEN
        RETURN row_j;
    END IF;
    FOR k, v IN SELECT * FROM jsonb_each(row_j) LOOP
        IF k = 'secret' OR k LIKE '%\_secret' THEN
            out := (out - k) || jsonb_build_object('has_' || k, jsonb_typeof(v) NOT IN ('null') AND v <> '""'::jsonb);
        ELSIF (k = 'url' OR k LIKE '%\_url') AND jsonb_typeof(v) = 'string' THEN
            out := out || jsonb_build_object(k, regexp_replace(regexp_replace(regexp_replace(
                v #>> '{}',
                '#.*$', ''),
                '^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@', '\1'),
                '([?&][^=&#]*=)[^&#]*', '\1***', 'g'));
        END IF;
    END LOOP;
    RETURN out;
END
$$;
COMMENT ON FUNCTION cc_audit_redact(jsonb) IS '审计日志不记录密钥：secret 列只记是否设置，网址的查询参数值以 *** 隐藏';

SELECT set_config('coldchain.audit_was_definer',
                  coalesce((SELECT prosecdef::text FROM pg_proc WHERE oid = 'cc_audit()'::regprocedure), 'false'),
                  true);

CREATE OR REPLACE FUNCTION cc_audit() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    old_j   jsonb := CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END;
    new_j   jsonb := CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END;
    changed jsonb := '{}'::jsonb;
    row_j   jsonb;
    unit    bigint;
BEGIN
    -- A password hash never leaves the users table, not even into the audit log; that it
    -- changed is recorded.
    IF TG_TABLE_NAME = 'users' THEN
        IF TG_OP = 'UPDATE' AND OLD.password_hash IS DISTINCT FROM NEW.password_hash THEN
            new_j := new_j || jsonb_build_object('password_changed', true);
        END IF;
        old_j := old_j - 'password_hash';
        new_j := new_j - 'password_hash';
    END IF;
    -- Nor does any other secret (webhook HMAC secrets, the key in a robot's URL): 0011.
    IF TG_OP = 'UPDATE' THEN
        SELECT coalesce(jsonb_object_agg(k || '_changed', true), '{}'::jsonb) INTO changed
        FROM jsonb_object_keys(new_j) AS k
        WHERE (k = 'secret' OR k LIKE '%\_secret' OR k = 'url' OR k LIKE '%\_url')
          AND old_j -> k IS DISTINCT FROM new_j -> k;
    END IF;
    old_j := cc_audit_redact(old_j);
    new_j := cc_audit_redact(new_j);
    IF new_j IS NOT NULL THEN
        new_j := new_j || changed;
    END IF;
    row_j := coalesce(new_j, old_j);
    unit := CASE TG_TABLE_NAME
        WHEN 'units' THEN (row_j ->> 'id')::bigint
        WHEN 'compartments' THEN
            (SELECT e.unit_id FROM equipment e WHERE e.id = (row_j ->> 'equipment_id')::bigint)
        WHEN 'probe_bindings' THEN
            (SELECT e.unit_id FROM compartments c JOIN equipment e ON e.id = c.equipment_id
             WHERE c.id = (row_j ->> 'compartment_id')::bigint)
        WHEN 'alarm_rule_params' THEN cc_compartment_unit((row_j ->> 'compartment_id')::bigint)
        WHEN 'thermometer_readings' THEN cc_compartment_unit((row_j ->> 'compartment_id')::bigint)
        WHEN 'drift_findings' THEN cc_compartment_unit((row_j ->> 'compartment_id')::bigint)
        WHEN 'probe_vendor_flags' THEN
            (SELECT p.unit_id FROM probes p WHERE p.id = (row_j ->> 'probe_id')::bigint)
        ELSE (row_j ->> 'unit_id')::bigint
    END;
    INSERT INTO audit_log (actor_id, action, entity, entity_id, op, unit_id, before, after)
    VALUES (
        nullif(current_setting('coldchain.actor_id', true), '')::bigint,
        coalesce(nullif(current_setting('coldchain.action', true), ''), lower(TG_OP)),
        TG_TABLE_NAME,
        (row_j ->> 'id')::bigint,
        TG_OP,
        unit,
        old_j,
        new_j
    );
    RETURN NULL;
END
$$;

DO $do$
BEGIN
    IF current_setting('coldchain.audit_was_definer', true) = 'true' THEN
        ALTER FUNCTION cc_audit() SECURITY DEFINER SET search_path = public, pg_temp;
    END IF;
END
$do$;

-- The secrets already in the log. Only notification_routes has had secret or URL columns.
ALTER TABLE audit_log DISABLE TRIGGER USER;
UPDATE audit_log
SET before = cc_audit_redact(before), after = cc_audit_redact(after)
WHERE entity = 'notification_routes';
ALTER TABLE audit_log ENABLE TRIGGER USER;
