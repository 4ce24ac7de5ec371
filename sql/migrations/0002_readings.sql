-- 0002 — probe readings, gateway status, latest values, hourly and daily aggregates.
--
-- Both storage paths expose the same names and columns:
--   probe_readings, gateway_status         TimescaleDB: hypertables (compressed, retained)
--                                          PostgreSQL:  ordinary tables
--   probe_readings_hourly / _daily          TimescaleDB: continuous aggregates, real-time
--                                          PostgreSQL:  views = materialised rows (agg_probe_*)
--                                                        below a watermark ∪ live aggregation above it
-- so a query written against one path returns the same rows on the other.
-- Days are China's: the daily aggregate buckets by Asia/Shanghai midnight.

CREATE TABLE probe_readings (
    probe_id    bigint NOT NULL,
    ts          timestamptz NOT NULL,
    t           double precision NOT NULL CHECK (t BETWEEN -90 AND 60),
    rh          real CHECK (rh BETWEEN 0 AND 100),
    bat         real,
    received_at timestamptz NOT NULL DEFAULT now(),
    -- (probe, ts) is the identity of a reading: a redelivered or re-uploaded reading is stored once.
    PRIMARY KEY (probe_id, ts)
);
COMMENT ON TABLE probe_readings IS '探头温度读数（每个探头每个时刻一条）';
COMMENT ON COLUMN probe_readings.probe_id IS '探头 id（probes.id）；所属温区见 probe_bindings 在 ts 时刻的绑定';
COMMENT ON COLUMN probe_readings.ts IS '测量时刻';
COMMENT ON COLUMN probe_readings.t IS '温度 ℃';
COMMENT ON COLUMN probe_readings.rh IS '相对湿度 %（可选）';
COMMENT ON COLUMN probe_readings.bat IS '探头电池电压 V（可选）';
COMMENT ON COLUMN probe_readings.received_at IS '入库时刻；与 ts 相差大即为补传数据';

CREATE TABLE gateway_status (
    gateway_id  bigint NOT NULL,
    ts          timestamptz NOT NULL,
    online      boolean,
    power       text CHECK (power IN ('ac', 'battery')),
    battery     real,
    rssi        smallint,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (gateway_id, ts)
);
COMMENT ON TABLE gateway_status IS '网关状态序列：在线/离线、供电（市电 ac / 电池 battery）、电池电压、信号强度';
COMMENT ON COLUMN gateway_status.rssi IS '信号强度 dBm';

-- Small, hot tables for the live board: one row per probe / gateway.
CREATE TABLE probe_latest (
    probe_id    bigint PRIMARY KEY,
    ts          timestamptz NOT NULL,
    t           double precision NOT NULL,
    rh          real,
    bat         real,
    received_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE probe_latest IS '每个探头的最新读数（实时看板用）';

CREATE TABLE gateway_latest (
    gateway_id   bigint PRIMARY KEY,
    ts           timestamptz NOT NULL,
    online       boolean,
    power        text,
    battery      real,
    rssi         smallint,
    last_seen_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE gateway_latest IS '每个网关的最新状态（实时看板用）';

-- Readings attributed to the compartment the probe was bound to at the time of the reading.
CREATE VIEW probe_readings_attributed AS
SELECT r.probe_id, r.ts, r.t, r.rh, r.bat, b.compartment_id, b.gateway_id
FROM probe_readings r
JOIN probe_bindings b ON b.probe_id = r.probe_id AND b.valid @> r.ts;
COMMENT ON VIEW probe_readings_attributed IS '按读数时刻的绑定归属到温区的读数';

-- ---------------------------------------------------------------------------------------------
DO $do$
BEGIN
    IF NOT cc_timescaledb() THEN
        RETURN;
    END IF;

    -- One day per chunk: the province writes ~20 M readings a day; a day's chunk and its index
    -- stay in memory while it is hot, and compression works chunk by chunk.
    PERFORM create_hypertable('probe_readings', by_range('ts', INTERVAL '1 day'));
    PERFORM create_hypertable('gateway_status', by_range('ts', INTERVAL '7 days'));

    EXECUTE $ddl$
        CREATE MATERIALIZED VIEW probe_readings_hourly
        WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
        SELECT probe_id,
               time_bucket(INTERVAL '1 hour', ts) AS bucket,
               count(*) AS n,
               min(t) AS min_t,
               max(t) AS max_t,
               avg(t) AS avg_t,
               sum(t) AS sum_t,
               min(ts) AS first_ts,
               max(ts) AS last_ts
        FROM probe_readings
        GROUP BY probe_id, time_bucket(INTERVAL '1 hour', ts)
        WITH NO DATA
    $ddl$;

    -- Hierarchical: days are built from hours, bucketed at Beijing midnight.
    EXECUTE $ddl$
        CREATE MATERIALIZED VIEW probe_readings_daily
        WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
        SELECT probe_id,
               time_bucket(INTERVAL '1 day', bucket, 'Asia/Shanghai') AS bucket,
               sum(n)::bigint AS n,
               min(min_t) AS min_t,
               max(max_t) AS max_t,
               sum(sum_t) / sum(n)::double precision AS avg_t,
               sum(sum_t) AS sum_t,
               min(first_ts) AS first_ts,
               max(last_ts) AS last_ts
        FROM probe_readings_hourly
        GROUP BY probe_id, time_bucket(INTERVAL '1 day', bucket, 'Asia/Shanghai')
        WITH NO DATA
    $ddl$;

    -- Refresh windows stay well inside the raw retention, so dropping old chunks never
    -- invalidates (and empties) old aggregate buckets.
    PERFORM add_continuous_aggregate_policy('probe_readings_hourly',
        start_offset => INTERVAL '30 days', end_offset => INTERVAL '1 hour',
        schedule_interval => INTERVAL '15 minutes');
    PERFORM add_continuous_aggregate_policy('probe_readings_daily',
        start_offset => INTERVAL '90 days', end_offset => INTERVAL '1 hour',
        schedule_interval => INTERVAL '1 hour');

    ALTER TABLE probe_readings SET (
        timescaledb.compress,
        timescaledb.compress_segmentby = 'probe_id',
        timescaledb.compress_orderby = 'ts DESC'
    );
    PERFORM add_compression_policy('probe_readings', INTERVAL '7 days');
    ALTER TABLE gateway_status SET (
        timescaledb.compress,
        timescaledb.compress_segmentby = 'gateway_id',
        timescaledb.compress_orderby = 'ts DESC'
    );
    PERFORM add_compression_policy('gateway_status', INTERVAL '30 days');

    -- 疫苗管理法 第三十七条: records are kept at least five years after the vaccine's expiry; vaccines
    -- expire within three years of receipt, so raw readings are kept eight years. Aggregates are kept.
    PERFORM add_retention_policy('probe_readings', INTERVAL '8 years');
    PERFORM add_retention_policy('gateway_status', INTERVAL '8 years');
END
$do$;

-- ---------------------------------------------------------------------------------------------
-- Plain PostgreSQL: the same aggregates, materialised incrementally by cc_agg_refresh().
--
-- How it mirrors a real-time continuous aggregate:
--   * agg_state.watermark — every bucket below it is materialised in agg_probe_*; the views add
--     live aggregation of the raw rows at or above it.
--   * agg_invalidation_threshold — readings inserted (or changed) below it are logged per probe in
--     agg_invalidations by a statement trigger, and their buckets are re-materialised at the next
--     refresh. The refresh first raises the threshold in its own transaction (which waits for the
--     writers that read the old threshold, as they hold it FOR SHARE), then materialises up to it,
--     so a concurrent late reading is either logged or seen by the refresh, never lost.
--   * Deleting raw readings does not touch the aggregates: old raw rows may be dropped while
--     their hourly and daily figures are kept (as on TimescaleDB, whose refresh windows stay
--     inside the raw retention). To rebuild a range after a deliberate correction, update the
--     readings instead of deleting them.
DO $do$
BEGIN
    IF cc_timescaledb() THEN
        RETURN;
    END IF;

    CREATE INDEX probe_readings_ts_idx ON probe_readings (ts);
    CREATE INDEX gateway_status_ts_idx ON gateway_status (ts);

    CREATE TABLE agg_probe_hourly (
        probe_id bigint NOT NULL,
        bucket   timestamptz NOT NULL,
        n        bigint NOT NULL,
        min_t    double precision,
        max_t    double precision,
        avg_t    double precision,
        sum_t    double precision,
        first_ts timestamptz,
        last_ts  timestamptz,
        PRIMARY KEY (probe_id, bucket)
    );
    CREATE TABLE agg_probe_daily (LIKE agg_probe_hourly INCLUDING ALL);

    CREATE TABLE agg_state (
        name      text PRIMARY KEY,
        watermark timestamptz NOT NULL DEFAULT '-infinity'
    );
    INSERT INTO agg_state (name) VALUES ('probe_readings_hourly'), ('probe_readings_daily');

    CREATE TABLE agg_invalidation_threshold (
        only_row  boolean PRIMARY KEY DEFAULT true CHECK (only_row),
        threshold timestamptz NOT NULL DEFAULT '-infinity'
    );
    INSERT INTO agg_invalidation_threshold DEFAULT VALUES;

    CREATE TABLE agg_invalidations (
        probe_id bigint NOT NULL,
        lo       timestamptz NOT NULL,
        hi       timestamptz NOT NULL
    );

    CREATE FUNCTION cc_probe_readings_invalidate() RETURNS trigger
    LANGUAGE plpgsql AS $fn$
    DECLARE
        th timestamptz;
    BEGIN
        SELECT threshold INTO th FROM agg_invalidation_threshold FOR SHARE;
        INSERT INTO agg_invalidations (probe_id, lo, hi)
        SELECT probe_id, min(ts), max(ts) FROM changed_rows WHERE ts < th GROUP BY probe_id;
        RETURN NULL;
    END
    $fn$;

    CREATE TRIGGER probe_readings_invalidate_ins AFTER INSERT ON probe_readings
        REFERENCING NEW TABLE AS changed_rows
        FOR EACH STATEMENT EXECUTE FUNCTION cc_probe_readings_invalidate();
    CREATE TRIGGER probe_readings_invalidate_upd_old AFTER UPDATE ON probe_readings
        REFERENCING OLD TABLE AS changed_rows
        FOR EACH STATEMENT EXECUTE FUNCTION cc_probe_readings_invalidate();
    CREATE TRIGGER probe_readings_invalidate_upd_new AFTER UPDATE ON probe_readings
        REFERENCING NEW TABLE AS changed_rows
        FOR EACH STATEMENT EXECUTE FUNCTION cc_probe_readings_invalidate();

    CREATE VIEW probe_readings_hourly AS
    SELECT probe_id, bucket, n, min_t, max_t, avg_t, sum_t, first_ts, last_ts
    FROM agg_probe_hourly
    WHERE bucket < (SELECT watermark FROM agg_state WHERE name = 'probe_readings_hourly')
    UNION ALL
    SELECT probe_id,
           time_bucket(INTERVAL '1 hour', ts) AS bucket,
           count(*) AS n,
           min(t) AS min_t,
           max(t) AS max_t,
           avg(t) AS avg_t,
           sum(t) AS sum_t,
           min(ts) AS first_ts,
           max(ts) AS last_ts
    FROM probe_readings
    WHERE ts >= (SELECT watermark FROM agg_state WHERE name = 'probe_readings_hourly')
    GROUP BY probe_id, time_bucket(INTERVAL '1 hour', ts);

    CREATE VIEW probe_readings_daily AS
    SELECT probe_id, bucket, n, min_t, max_t, avg_t, sum_t, first_ts, last_ts
    FROM agg_probe_daily
    WHERE bucket < (SELECT watermark FROM agg_state WHERE name = 'probe_readings_daily')
    UNION ALL
    SELECT probe_id,
           time_bucket(INTERVAL '1 day', bucket, 'Asia/Shanghai') AS bucket,
           sum(n)::bigint AS n,
           min(min_t) AS min_t,
           max(max_t) AS max_t,
           sum(sum_t) / sum(n)::double precision AS avg_t,
           sum(sum_t) AS sum_t,
           min(first_ts) AS first_ts,
           max(last_ts) AS last_ts
    FROM probe_readings_hourly
    WHERE bucket >= (SELECT watermark FROM agg_state WHERE name = 'probe_readings_daily')
    GROUP BY probe_id, time_bucket(INTERVAL '1 day', bucket, 'Asia/Shanghai');

    -- Step 1 of a refresh, in its own transaction: raise the invalidation threshold.
    CREATE FUNCTION cc_agg_advance_threshold(p_until timestamptz) RETURNS timestamptz
    LANGUAGE sql AS $fn$
        UPDATE agg_invalidation_threshold
        SET threshold = greatest(threshold, time_bucket(INTERVAL '1 hour', p_until))
        RETURNING threshold
    $fn$;

    -- Step 2: re-materialise invalidated buckets, then materialise up to the threshold.
    -- Returns the number of hourly and daily rows written.
    CREATE FUNCTION cc_agg_refresh(OUT hourly_rows bigint, OUT daily_rows bigint)
    LANGUAGE plpgsql AS $fn$
    DECLARE
        th     timestamptz;
        wm_h   timestamptz;
        wm_d   timestamptz;
        new_d  timestamptz;
        affected bigint;
    BEGIN
        PERFORM pg_advisory_xact_lock(hashtext('coldchain.agg_refresh'));
        SELECT threshold INTO th FROM agg_invalidation_threshold;
        SELECT watermark INTO wm_h FROM agg_state WHERE name = 'probe_readings_hourly';
        SELECT watermark INTO wm_d FROM agg_state WHERE name = 'probe_readings_daily';
        hourly_rows := 0;
        daily_rows := 0;

        -- Hourly buckets below the watermark that late or corrected readings touched.
        CREATE TEMP TABLE _cc_inv_hours ON COMMIT DROP AS
        WITH inv AS (DELETE FROM agg_invalidations RETURNING probe_id, lo, hi)
        SELECT DISTINCT inv.probe_id, b.bucket
        FROM inv
        CROSS JOIN LATERAL generate_series(time_bucket(INTERVAL '1 hour', inv.lo),
                                           time_bucket(INTERVAL '1 hour', inv.hi),
                                           INTERVAL '1 hour') AS b (bucket)
        WHERE b.bucket < wm_h;

        DELETE FROM agg_probe_hourly h USING _cc_inv_hours x
        WHERE h.probe_id = x.probe_id AND h.bucket = x.bucket;
        INSERT INTO agg_probe_hourly
        SELECT r.probe_id, x.bucket, count(*), min(r.t), max(r.t), avg(r.t), sum(r.t), min(r.ts), max(r.ts)
        FROM _cc_inv_hours x
        JOIN probe_readings r
          ON r.probe_id = x.probe_id AND r.ts >= x.bucket AND r.ts < x.bucket + INTERVAL '1 hour'
        GROUP BY r.probe_id, x.bucket;
        GET DIAGNOSTICS affected = ROW_COUNT;
        hourly_rows := hourly_rows + affected;

        -- New hourly buckets, from the watermark up to the threshold.
        IF th > wm_h THEN
            INSERT INTO agg_probe_hourly
            SELECT probe_id, time_bucket(INTERVAL '1 hour', ts), count(*), min(t), max(t), avg(t), sum(t),
                   min(ts), max(ts)
            FROM probe_readings
            WHERE ts >= wm_h AND ts < th
            GROUP BY probe_id, time_bucket(INTERVAL '1 hour', ts);
            GET DIAGNOSTICS affected = ROW_COUNT;
            hourly_rows := hourly_rows + affected;
            UPDATE agg_state SET watermark = th WHERE name = 'probe_readings_hourly';
            wm_h := th;
        END IF;

        -- Daily: re-materialise the days whose hours changed, then whole days below the hourly watermark.
        CREATE TEMP TABLE _cc_inv_days ON COMMIT DROP AS
        SELECT DISTINCT probe_id, time_bucket(INTERVAL '1 day', bucket, 'Asia/Shanghai') AS bucket
        FROM _cc_inv_hours
        WHERE time_bucket(INTERVAL '1 day', bucket, 'Asia/Shanghai') < wm_d;

        DELETE FROM agg_probe_daily d USING _cc_inv_days x
        WHERE d.probe_id = x.probe_id AND d.bucket = x.bucket;
        INSERT INTO agg_probe_daily
        SELECT h.probe_id, x.bucket, sum(h.n)::bigint, min(h.min_t), max(h.max_t),
               sum(h.sum_t) / sum(h.n)::double precision, sum(h.sum_t), min(h.first_ts), max(h.last_ts)
        FROM _cc_inv_days x
        JOIN agg_probe_hourly h
          ON h.probe_id = x.probe_id AND h.bucket >= x.bucket AND h.bucket < x.bucket + INTERVAL '1 day'
        GROUP BY h.probe_id, x.bucket;
        GET DIAGNOSTICS affected = ROW_COUNT;
        daily_rows := daily_rows + affected;

        IF isfinite(wm_h) THEN
            new_d := time_bucket(INTERVAL '1 day', wm_h, 'Asia/Shanghai');
        ELSE
            new_d := wm_d;
        END IF;
        IF new_d > wm_d THEN
            INSERT INTO agg_probe_daily
            SELECT probe_id, time_bucket(INTERVAL '1 day', bucket, 'Asia/Shanghai'), sum(n)::bigint,
                   min(min_t), max(max_t), sum(sum_t) / sum(n)::double precision, sum(sum_t),
                   min(first_ts), max(last_ts)
            FROM agg_probe_hourly
            WHERE bucket >= wm_d AND bucket < new_d
            GROUP BY probe_id, time_bucket(INTERVAL '1 day', bucket, 'Asia/Shanghai');
            GET DIAGNOSTICS affected = ROW_COUNT;
            daily_rows := daily_rows + affected;
            UPDATE agg_state SET watermark = new_d WHERE name = 'probe_readings_daily';
        END IF;
    END
    $fn$;

    COMMENT ON TABLE agg_probe_hourly IS '（普通 PostgreSQL 路径）小时聚合的物化部分；请查询视图 probe_readings_hourly';
    COMMENT ON TABLE agg_probe_daily IS '（普通 PostgreSQL 路径）日聚合的物化部分；请查询视图 probe_readings_daily';
    COMMENT ON TABLE agg_state IS '（普通 PostgreSQL 路径）各聚合的水位线：其下已物化，其上实时计算';
    COMMENT ON TABLE agg_invalidations IS '（普通 PostgreSQL 路径）水位线以下被补传或修改的读数区间，待下次刷新重算';
END
$do$;

COMMENT ON VIEW probe_readings_hourly IS '每探头每小时聚合：条数、最低、最高、平均、合计温度、首末读数时刻（含实时部分）';
COMMENT ON VIEW probe_readings_daily IS '每探头每日（北京时间零点分日）聚合，由小时聚合汇总（含实时部分）';
