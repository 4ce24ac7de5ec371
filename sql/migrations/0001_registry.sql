-- 0001 — storage path, time_bucket for plain PostgreSQL, the organisational and device registry.
--
-- The storage path (TimescaleDB or plain PostgreSQL) is decided here, once, and recorded in
-- coldchain_meta; every later migration asks cc_timescaledb() instead of probing the server again,
-- so a database never ends up half on one path and half on the other.
-- The migrator sets coldchain.timescaledb (auto | require | off) for this transaction.

CREATE TABLE coldchain_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);
COMMENT ON TABLE coldchain_meta IS '系统元数据：存储路径（timescaledb / postgresql）等一次性决定';

DO $do$
DECLARE
    mode text := coalesce(nullif(current_setting('coldchain.timescaledb', true), ''), 'auto');
    path text := 'postgresql';
BEGIN
    IF mode NOT IN ('auto', 'require', 'off') THEN
        RAISE EXCEPTION 'coldchain.timescaledb 只能是 auto、require 或 off，实际为 %', mode;
    END IF;
    IF mode <> 'off' AND EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') THEN
        BEGIN
            CREATE EXTENSION IF NOT EXISTS timescaledb;
            path := 'timescaledb';
        EXCEPTION WHEN OTHERS THEN
            -- Typically: the package is installed but not in shared_preload_libraries.
            IF mode = 'require' THEN
                RAISE;
            END IF;
            RAISE WARNING 'timescaledb 扩展无法启用（%），改用普通 PostgreSQL 存储路径', SQLERRM;
        END;
    END IF;
    IF path = 'postgresql' AND mode = 'require' THEN
        RAISE EXCEPTION '要求使用 TimescaleDB（COLDCHAIN_TIMESCALEDB=require），但数据库服务器没有提供 timescaledb 扩展';
    END IF;
    IF path = 'timescaledb' AND EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb_toolkit') THEN
        CREATE EXTENSION IF NOT EXISTS timescaledb_toolkit;
    END IF;
    INSERT INTO coldchain_meta (key, value) VALUES ('storage_path', path);
END
$do$;

CREATE FUNCTION cc_timescaledb() RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT value = 'timescaledb' FROM coldchain_meta WHERE key = 'storage_path'), false)
$$;
COMMENT ON FUNCTION cc_timescaledb() IS '本库是否走 TimescaleDB 存储路径（在 0001 迁移时一次决定）';

-- On plain PostgreSQL, time_bucket() with TimescaleDB's semantics (origin 2000-01-03 for fixed
-- widths, 2000-01-01 for month widths, optional time zone), so that views, reports and the
-- analysts' queries are the same SQL on both paths.
DO $do$
BEGIN
    IF cc_timescaledb() THEN
        RETURN;
    END IF;
    EXECUTE $fn$
        CREATE FUNCTION time_bucket(bucket_width interval, ts timestamptz) RETURNS timestamptz
        LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT AS $body$
            SELECT CASE
                WHEN extract(year FROM bucket_width) = 0 AND extract(month FROM bucket_width) = 0
                THEN date_bin(bucket_width, ts, timestamptz '2000-01-03 00:00:00+00')
                ELSE (timestamp '2000-01-01' + make_interval(months => (
                        floor(((extract(year FROM ts AT TIME ZONE 'UTC') - 2000) * 12
                               + extract(month FROM ts AT TIME ZONE 'UTC') - 1)
                              / (extract(year FROM bucket_width) * 12 + extract(month FROM bucket_width)))
                        * (extract(year FROM bucket_width) * 12 + extract(month FROM bucket_width)))::int
                     )) AT TIME ZONE 'UTC'
            END
        $body$
    $fn$;
    EXECUTE $fn$
        CREATE FUNCTION time_bucket(bucket_width interval, ts timestamptz, timezone text) RETURNS timestamptz
        LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT AS $body$
            SELECT CASE
                WHEN extract(year FROM bucket_width) = 0 AND extract(month FROM bucket_width) = 0
                THEN date_bin(bucket_width, ts AT TIME ZONE timezone, timestamp '2000-01-03 00:00:00')
                     AT TIME ZONE timezone
                ELSE (timestamp '2000-01-01' + make_interval(months => (
                        floor(((extract(year FROM ts AT TIME ZONE timezone) - 2000) * 12
                               + extract(month FROM ts AT TIME ZONE timezone) - 1)
                              / (extract(year FROM bucket_width) * 12 + extract(month FROM bucket_width)))
                        * (extract(year FROM bucket_width) * 12 + extract(month FROM bucket_width)))::int
                     )) AT TIME ZONE timezone
            END
        $body$
    $fn$;
    EXECUTE $c$COMMENT ON FUNCTION time_bucket(interval, timestamptz)
        IS '与 TimescaleDB time_bucket 语义相同的普通 PostgreSQL 实现（起点 2000-01-03 / 按月 2000-01-01）'$c$;
    EXECUTE $c$COMMENT ON FUNCTION time_bucket(interval, timestamptz, text)
        IS '带时区的 time_bucket：按当地零点分桶（如 Asia/Shanghai）'$c$;
END
$do$;

-- ---------------------------------------------------------------------------------------------
-- Organisational units: province → city → county → township (vaccination site).
-- The hierarchy is the parent link, never the code prefix: 杨陵区, 韩城市, 神木市 and 府谷县 report
-- straight to the province although their codes sit under a city.

CREATE TABLE units (
    id         bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    code       text NOT NULL UNIQUE CHECK (code ~ '^[0-9]{10}$'),
    name       text NOT NULL CHECK (btrim(name) <> ''),
    level      text NOT NULL CHECK (level IN ('province', 'city', 'county', 'township')),
    parent_id  bigint REFERENCES units (id),
    address    text,
    phone      text,
    active     boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    version    integer NOT NULL DEFAULT 1,
    CONSTRAINT units_root_is_province CHECK ((level = 'province') = (parent_id IS NULL))
);
CREATE INDEX units_parent_idx ON units (parent_id);
COMMENT ON TABLE units IS '单位：省、市、县（区）疾控中心与乡级接种单位；上下级以 parent_id 为准';
COMMENT ON COLUMN units.code IS '十位单位编码，如 6101030203';
COMMENT ON COLUMN units.level IS 'province 省 / city 市 / county 县区 / township 乡级接种单位';

CREATE FUNCTION cc_unit_level_rank(level text) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE level WHEN 'province' THEN 1 WHEN 'city' THEN 2 WHEN 'county' THEN 3 WHEN 'township' THEN 4 END
$$;

-- Closure table: one row per (ancestor, descendant), depth 0 for the unit itself. Jurisdiction
-- checks ("this unit or below") become one indexed join instead of a recursive query per request.
CREATE TABLE unit_tree (
    ancestor_id   bigint NOT NULL REFERENCES units (id),
    descendant_id bigint NOT NULL REFERENCES units (id),
    depth         integer NOT NULL CHECK (depth >= 0),
    PRIMARY KEY (ancestor_id, descendant_id)
);
CREATE INDEX unit_tree_descendant_idx ON unit_tree (descendant_id, depth);
COMMENT ON TABLE unit_tree IS '单位闭包表：祖先—后代（含自身，depth=0），用于辖区判断';

CREATE FUNCTION cc_units_check_parent() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    parent_level text;
BEGIN
    IF NEW.parent_id IS NULL THEN
        RETURN NEW;
    END IF;
    SELECT level INTO parent_level FROM units WHERE id = NEW.parent_id;
    IF cc_unit_level_rank(parent_level) >= cc_unit_level_rank(NEW.level) THEN
        RAISE EXCEPTION '单位 % 的上级必须高于其级别（% 不能隶属于 %）', NEW.code, NEW.level, parent_level
            USING ERRCODE = 'check_violation';
    END IF;
    IF TG_OP = 'UPDATE' AND EXISTS (
        SELECT 1 FROM unit_tree WHERE ancestor_id = NEW.id AND descendant_id = NEW.parent_id
    ) THEN
        RAISE EXCEPTION '单位 % 不能隶属于其下级单位', NEW.code USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER units_check_parent BEFORE INSERT OR UPDATE OF parent_id, level ON units
    FOR EACH ROW EXECUTE FUNCTION cc_units_check_parent();

CREATE FUNCTION cc_units_maintain_tree() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO unit_tree (ancestor_id, descendant_id, depth)
        SELECT ancestor_id, NEW.id, depth + 1 FROM unit_tree WHERE descendant_id = NEW.parent_id
        UNION ALL
        SELECT NEW.id, NEW.id, 0;
    ELSIF NEW.parent_id IS DISTINCT FROM OLD.parent_id THEN
        -- Move the subtree: cut its links to the old ancestors, link it under the new parent.
        DELETE FROM unit_tree
        WHERE descendant_id IN (SELECT descendant_id FROM unit_tree WHERE ancestor_id = NEW.id)
          AND ancestor_id NOT IN (SELECT descendant_id FROM unit_tree WHERE ancestor_id = NEW.id);
        INSERT INTO unit_tree (ancestor_id, descendant_id, depth)
        SELECT sup.ancestor_id, sub.descendant_id, sup.depth + sub.depth + 1
        FROM unit_tree sup CROSS JOIN unit_tree sub
        WHERE sup.descendant_id = NEW.parent_id AND sub.ancestor_id = NEW.id;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER units_maintain_tree AFTER INSERT OR UPDATE OF parent_id ON units
    FOR EACH ROW EXECUTE FUNCTION cc_units_maintain_tree();

-- ---------------------------------------------------------------------------------------------
-- Cold-chain equipment and its monitored compartments (each with its own mode and limits).

CREATE TABLE equipment (
    id                bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    unit_id           bigint NOT NULL REFERENCES units (id),
    kind              text NOT NULL
                      CHECK (kind IN ('fridge', 'freezer', 'medical_fridge', 'cold_room', 'vehicle')),
    name              text NOT NULL CHECK (btrim(name) <> ''),
    brand             text,
    model             text,
    asset_no          text,
    plate_no          text,
    status            text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'decommissioned')),
    commissioned_on   date,
    decommissioned_at timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    version           integer NOT NULL DEFAULT 1,
    CHECK ((status = 'decommissioned') = (decommissioned_at IS NOT NULL))
);
CREATE INDEX equipment_unit_idx ON equipment (unit_id);
COMMENT ON TABLE equipment IS '冷链设备：冰箱、冰柜、医用冷藏柜、冷库、冷藏车';
COMMENT ON COLUMN equipment.kind IS 'fridge 冰箱 / freezer 冰柜 / medical_fridge 医用冷藏柜 / cold_room 冷库 / vehicle 冷藏车';

CREATE TABLE compartments (
    id                bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    equipment_id      bigint NOT NULL REFERENCES equipment (id),
    name              text NOT NULL CHECK (btrim(name) <> ''),
    mode              text NOT NULL CHECK (mode IN ('refrigerated', 'frozen')),
    t_min             numeric(4, 1),
    t_max             numeric(4, 1) NOT NULL,
    status            text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'decommissioned')),
    decommissioned_at timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    version           integer NOT NULL DEFAULT 1,
    CHECK (t_min IS NULL OR t_min < t_max),
    CHECK ((status = 'decommissioned') = (decommissioned_at IS NOT NULL))
);
CREATE INDEX compartments_equipment_idx ON compartments (equipment_id);
COMMENT ON TABLE compartments IS '受监测的温区：冷藏（默认 2～8 ℃）或冷冻（默认 ≤ −15 ℃），各有上下限';
COMMENT ON COLUMN compartments.mode IS 'refrigerated 冷藏 / frozen 冷冻';
COMMENT ON COLUMN compartments.t_min IS '温度下限 ℃；冷冻温区可为空（无下限）';
COMMENT ON COLUMN compartments.t_max IS '温度上限 ℃';

-- Limits default by mode, so a compartment is never created without limits.
CREATE FUNCTION cc_compartments_default_limits() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.t_max IS NULL THEN
        IF NEW.mode = 'refrigerated' THEN
            NEW.t_min := coalesce(NEW.t_min, 2.0);
            NEW.t_max := 8.0;
        ELSE
            NEW.t_max := -15.0;
        END IF;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER compartments_default_limits BEFORE INSERT ON compartments
    FOR EACH ROW EXECUTE FUNCTION cc_compartments_default_limits();

-- ---------------------------------------------------------------------------------------------
-- Monitoring hardware supplied by the province, each item with its vendor warranty (CM4).

CREATE TABLE gateways (
    id            bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    serial        text NOT NULL UNIQUE CHECK (serial ~ '^[0-9A-Za-z_-]{1,32}$'),
    unit_id       bigint REFERENCES units (id),
    vendor        text,
    model         text,
    installed_on  date,
    warranty_end  date,
    status        text NOT NULL DEFAULT 'active' CHECK (status IN ('in_stock', 'active', 'decommissioned')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    version       integer NOT NULL DEFAULT 1
);
CREATE INDEX gateways_unit_idx ON gateways (unit_id);
COMMENT ON TABLE gateways IS '网关（中继器）：serial 为网关号，即 MQTT 主题中的 {gateway}';

CREATE TABLE probes (
    id            bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    serial        text NOT NULL UNIQUE CHECK (serial ~ '^[0-9A-Za-z_-]{1,32}$'),
    unit_id       bigint REFERENCES units (id),
    vendor        text,
    model         text,
    installed_on  date,
    warranty_end  date,
    status        text NOT NULL DEFAULT 'active' CHECK (status IN ('in_stock', 'active', 'decommissioned')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    version       integer NOT NULL DEFAULT 1
);
CREATE INDEX probes_unit_idx ON probes (unit_id);
COMMENT ON TABLE probes IS '温度探头：serial 为探头编码（如 208601）';

-- Which compartment a probe measured, through which gateway, and when. History is never rewritten:
-- a swap closes one interval and opens another, so every reading is attributed to the compartment
-- its probe was bound to at that time. One probe has at most one binding at any instant; the
-- exclusion uses GiST range equality on int8range(probe_id) so that btree_gist is not needed.
CREATE TABLE probe_bindings (
    id             bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    probe_id       bigint NOT NULL REFERENCES probes (id),
    compartment_id bigint NOT NULL REFERENCES compartments (id),
    gateway_id     bigint NOT NULL REFERENCES gateways (id),
    valid          tstzrange NOT NULL,
    reason         text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    created_by     bigint,
    CONSTRAINT probe_bindings_valid_shape CHECK (
        NOT isempty(valid) AND lower(valid) IS NOT NULL AND lower_inc(valid) AND NOT upper_inc(valid)
    ),
    CONSTRAINT probe_bindings_no_overlap
        EXCLUDE USING gist (int8range(probe_id, probe_id, '[]') WITH =, valid WITH &&)
);
CREATE INDEX probe_bindings_probe_idx ON probe_bindings (probe_id, lower(valid));
CREATE INDEX probe_bindings_compartment_idx ON probe_bindings (compartment_id);
CREATE INDEX probe_bindings_gateway_idx ON probe_bindings (gateway_id);
COMMENT ON TABLE probe_bindings IS '探头绑定历史：探头—温区—网关，valid 为有效期 [起, 止)；止为空表示当前有效';

CREATE VIEW probe_bindings_current AS
SELECT id, probe_id, compartment_id, gateway_id, lower(valid) AS valid_from, reason
FROM probe_bindings
WHERE upper_inf(valid);
COMMENT ON VIEW probe_bindings_current IS '当前有效的探头绑定';

-- ---------------------------------------------------------------------------------------------
-- Users (UM1) and the three levels of alarm responsibility per unit (CM15).

CREATE TABLE users (
    id            bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    username      text NOT NULL UNIQUE CHECK (username ~ '^[A-Za-z0-9_.@-]{3,64}$'),
    real_name     text NOT NULL CHECK (btrim(real_name) <> ''),
    phone         text,
    email         text,
    unit_id       bigint NOT NULL REFERENCES units (id),
    role          text NOT NULL CHECK (role IN ('system_admin', 'business_admin', 'supervisor', 'analyst')),
    department    text,
    password_hash text,
    wechat_openid text UNIQUE,
    status        text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'closed', 'deleted')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    created_by    bigint REFERENCES users (id),
    version       integer NOT NULL DEFAULT 1
);
CREATE INDEX users_unit_idx ON users (unit_id);
COMMENT ON TABLE users IS '实名用户：system_admin 系统管理员 / business_admin 业务管理员 / supervisor 督导（只读）/ analyst 分析员';
COMMENT ON COLUMN users.password_hash IS 'argon2id 哈希；为空则不能以密码登录';
COMMENT ON COLUMN users.wechat_openid IS '绑定的微信 openid，用于报警推送（CM15）';

-- UM1: townships have no system administrator; their county manages them.
CREATE FUNCTION cc_users_check_role() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.role = 'system_admin'
       AND (SELECT level FROM units WHERE id = NEW.unit_id) = 'township' THEN
        RAISE EXCEPTION '乡级及以下单位不设系统管理员（用户 %）', NEW.username USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER users_check_role BEFORE INSERT OR UPDATE OF role, unit_id ON users
    FOR EACH ROW EXECUTE FUNCTION cc_users_check_role();

CREATE TABLE unit_responsibles (
    unit_id    bigint NOT NULL REFERENCES units (id),
    level      smallint NOT NULL CHECK (level BETWEEN 1 AND 3),
    user_id    bigint NOT NULL REFERENCES users (id),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (unit_id, level, user_id)
);
CREATE INDEX unit_responsibles_user_idx ON unit_responsibles (user_id);
COMMENT ON TABLE unit_responsibles IS '三级负责人：1 疫苗管理具体负责人，2 科室负责人，3 单位负责人（CM15）';

-- CM14: every sign-in, by channel, so that twice-a-day logins can be checked per site.
CREATE TABLE login_events (
    id         bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    user_id    bigint REFERENCES users (id),
    unit_id    bigint REFERENCES units (id),
    username   text NOT NULL,
    ts         timestamptz NOT NULL DEFAULT now(),
    channel    text NOT NULL CHECK (channel IN ('web', 'wechat', 'api')),
    success    boolean NOT NULL,
    reason     text,
    ip         inet,
    user_agent text
);
CREATE INDEX login_events_unit_ts_idx ON login_events (unit_id, ts);
CREATE INDEX login_events_user_ts_idx ON login_events (user_id, ts);
COMMENT ON TABLE login_events IS '登录记录（平台或微信），用于每日两次、间隔 6 小时的登录检查（CM14）';
