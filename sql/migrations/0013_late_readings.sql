-- 0013 — late readings are logged by the statement that ingests them, on both storage paths
-- (issue #16), instead of by triggers on probe_readings.
--
-- 0009 logged readings older than the excursion threshold with a statement trigger on plain
-- PostgreSQL and, because TimescaleDB refuses transition tables on hypertables, a row trigger there
-- — which a back-filled batch paid on every row (15–25 % slower ingest on a real TimescaleDB
-- 2.28). Since readings are append-only (0010) and written only by the ingester, its one INSERT
-- statement (ingest/store.py, MOVE_READINGS) knows which rows it stored and logs the late ones
-- itself. The plain path's aggregate-invalidation trigger (0002) stays: it is a statement trigger
-- and exists only there.

DROP TRIGGER IF EXISTS probe_readings_excursions_ins ON probe_readings;
DROP FUNCTION cc_excursion_invalidate_readings();
DROP FUNCTION cc_excursion_invalidate_reading();

-- The threshold, read FOR SHARE (a row lock needs UPDATE privilege, which the runtime role must
-- not have on it): a refresh advancing the threshold waits for the ingesting transaction, or the
-- transaction sees the advanced threshold and logs by it.
CREATE FUNCTION cc_excursion_threshold_for_writers() RETURNS timestamptz
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT threshold FROM excursion_threshold FOR SHARE
$$;
REVOKE ALL ON FUNCTION cc_excursion_threshold_for_writers() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION cc_excursion_threshold_for_writers() TO coldchain_runtime;
COMMENT ON FUNCTION cc_excursion_threshold_for_writers() IS
    '采集写入读数时读取超温时段阈值（共享锁）：早于阈值的补传读数记入 excursion_invalidations，供下次刷新重算';

GRANT INSERT ON excursion_invalidations TO coldchain_runtime;
