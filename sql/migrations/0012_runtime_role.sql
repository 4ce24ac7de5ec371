-- 0012 — the runtime role: what the ingester, the scheduler and the API may do, and nothing more
-- (issue #15, least privilege).
--
-- Migrations run as the owner (COLDCHAIN_OWNER_DATABASE_URL); the services connect as a login role
-- that is a member of the group role coldchain_runtime, which owns nothing and holds exactly the
-- grants below. Not granted to it, ever: TRUNCATE, REFERENCES, TRIGGER, CREATE on any schema,
-- ownership (so no ALTER, no DISABLE TRIGGER), superuser (so no session_replication_role).
--
-- Derived and guarded tables change only through SECURITY DEFINER functions owned by the owner,
-- each with a fixed search_path and EXECUTE granted to coldchain_runtime alone (PUBLIC, and so the
-- analysts, lose it): the stock balances and movements (cc_post_movement, cc_reserve, cc_release),
-- the aggregates and excursion spans (their refresh functions and the triggers that log late
-- readings), the audit log (its trigger), the unit tree (its trigger) and lot revisions (theirs).
-- The runtime role can read those tables but never write them directly.
--
-- Records that are only ever added — temperature records, ledger events, logs — get INSERT and
-- SELECT only (append-only by privilege; 0010 adds the triggers that also stop the owner).
--
-- A later migration that adds a table grants to coldchain_runtime what its work needs;
-- tests/core/test_roles.py fails on a table the runtime role cannot read or may write beyond this.

DO $do$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'coldchain_runtime') THEN
        BEGIN
            CREATE ROLE coldchain_runtime NOLOGIN;
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN
                NULL;  -- another database's migration created it meanwhile
            WHEN insufficient_privilege THEN
                RAISE EXCEPTION '迁移用户没有 CREATEROLE 权限，无法创建运行组角色 coldchain_runtime。'
                    '请由数据库管理员执行一次 CREATE ROLE coldchain_runtime NOLOGIN; 后重新运行 coldchain db migrate';
        END;
    END IF;
END
$do$;

GRANT USAGE ON SCHEMA public TO coldchain_runtime;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO coldchain_runtime;
-- Named again: TimescaleDB propagates a GRANT that names a hypertable or continuous aggregate to
-- its chunks and materialised hypertable, but not one given ON ALL TABLES IN SCHEMA (issue 3595
-- of timescale/timescaledb). Reads through the hypertable need only its own grant; direct reads
-- of chunks (pg_dump as this role, tools) need the chunks'.
GRANT SELECT ON probe_readings, gateway_status, probe_readings_hourly, probe_readings_daily TO coldchain_runtime;
REVOKE SELECT ON analyst_scopes, cc_analyst_units FROM coldchain_runtime;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO coldchain_runtime;

-- Append-only records: INSERT, never UPDATE or DELETE.
GRANT INSERT ON
    probe_readings, gateway_status, thermometer_readings,
    ingest_dead_letters, ingest_quarantine,
    login_events, form_steps, alarm_events,
    movement_codes, vaccinations, lot_certificates,
    probe_vendor_flags, monthly_reports
TO coldchain_runtime;

-- Records with a life (states, versions, latest values): INSERT and UPDATE, never DELETE.
GRANT INSERT, UPDATE ON
    units, equipment, compartments, gateways, probes, probe_bindings, users, forms, auth_sessions,
    probe_latest, gateway_latest, probe_unbound_readings,
    alarms, alarm_links, alarm_rule_state, alarm_rule_params, unit_escalation, notification_outbox,
    drift_findings,
    vaccine_categories, manufacturers, vaccines, vaccine_specs, lots, package_codes,
    stock_transfers, stock_requests, usage_plans, lot_error_reports
TO coldchain_runtime;

-- Lists an administrator edits by replacing entries.
GRANT INSERT, UPDATE, DELETE ON unit_responsibles, notification_routes, usage_plan_lines TO coldchain_runtime;

-- The guarded paths: SECURITY DEFINER, fixed search_path, EXECUTE for the runtime role only.
DO $do$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN
        SELECT p.oid::regprocedure
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'public'
          AND p.proname IN ('cc_post_movement', 'cc_reserve', 'cc_release',
                            'cc_agg_advance_threshold', 'cc_agg_refresh',
                            'cc_excursion_advance_threshold', 'cc_excursion_refresh',
                            'cc_probe_readings_invalidate', 'cc_excursion_invalidate_readings',
                            'cc_excursion_invalidate_reading', 'cc_excursion_invalidate_binding',
                            'cc_excursion_invalidate_limits',
                            'cc_audit', 'cc_units_maintain_tree', 'cc_lot_revision')
    LOOP
        EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = public, pg_temp', f);
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
    FOR f IN
        SELECT p.oid::regprocedure
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'public'
          AND p.proname IN ('cc_post_movement', 'cc_reserve', 'cc_release',
                            'cc_agg_advance_threshold', 'cc_agg_refresh',
                            'cc_excursion_advance_threshold', 'cc_excursion_refresh')
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO coldchain_runtime', f);
    END LOOP;
END
$do$;

-- Row locks on the guarded tables, for the runtime role: FOR UPDATE needs UPDATE privilege, which
-- it must not have there. A stock count holds the unit's balances while it books the differences;
-- a reversal holds the movement it undoes.
CREATE FUNCTION cc_lock_balances(p_unit bigint) RETURNS SETOF stock_balances
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT * FROM stock_balances WHERE unit_id = p_unit AND on_hand > 0 ORDER BY lot_id FOR UPDATE
$$;
CREATE FUNCTION cc_lock_movement(p_id bigint) RETURNS SETOF stock_movements
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT * FROM stock_movements WHERE id = p_id FOR UPDATE
$$;
REVOKE ALL ON FUNCTION cc_lock_balances(bigint), cc_lock_movement(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION cc_lock_balances(bigint), cc_lock_movement(bigint) TO coldchain_runtime;
