-- 0007 — the analysts' SQL interface (DC4): schema analytics of stable, commented, read-only views,
-- the group role coldchain_analyst, and jurisdiction scoping by database role.
--
-- Scoping: analyst_scopes maps a database role name to one or more units; every analytics view
-- keeps only rows of units in those units' subtrees (unit_tree), for current_user. Row-level
-- security is not an option: TimescaleDB refuses to enable it on a hypertable with compression
-- (probe_readings, gateway_status), and the views would need it on the continuous aggregates too.
-- The views are owned by the migration owner, so analysts read base tables only through them;
-- they are security_barrier views, so an analyst's own predicate (even a function they wrote in
-- pg_temp) is evaluated only on rows the scope filter already let through. Comparisons of
-- columns with constants (ts >= …, unit_id = …) are leakproof and still reach the base scans, so a
-- time-bounded query uses the readings' index (plain path) or chunk exclusion (TimescaleDB).
--
-- Roles are cluster-wide: the group role is created only if missing (other databases of the same
-- cluster, e.g. parallel test databases, share it), and a concurrent creator is tolerated.

DO $do$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'coldchain_analyst') THEN
        BEGIN
            CREATE ROLE coldchain_analyst NOLOGIN;
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN
                NULL;  -- another database's migration created it meanwhile
            WHEN insufficient_privilege THEN
                RAISE EXCEPTION '迁移用户没有 CREATEROLE 权限，无法创建分析员组角色 coldchain_analyst。'
                    '请由数据库管理员执行一次 CREATE ROLE coldchain_analyst NOLOGIN; 后重新运行 coldchain db migrate';
        END;
    END IF;
END
$do$;
-- No COMMENT ON ROLE: it is one cluster-wide row that concurrent migrations would update at once.

-- ---------------------------------------------------------------------------------------------
-- Scopes. A role may have several units (e.g. two counties); rows of a unit's whole subtree are
-- visible. A role without a row sees nothing, whatever else it is a member of.

CREATE TABLE analyst_scopes (
    role_name  text NOT NULL CHECK (octet_length(role_name) BETWEEN 1 AND 63),
    unit_id    bigint NOT NULL REFERENCES units (id),
    granted_at timestamptz NOT NULL DEFAULT now(),
    granted_by text NOT NULL DEFAULT current_user,
    PRIMARY KEY (role_name, unit_id)
);
COMMENT ON TABLE analyst_scopes IS '分析员数据库角色 → 可见单位（含其全部下级）；无记录的角色在 analytics 视图中看不到任何行';
COMMENT ON COLUMN analyst_scopes.role_name IS '数据库角色名（PostgreSQL role；与 current_user 比较，区分大小写）';
COMMENT ON COLUMN analyst_scopes.unit_id IS '辖区根单位；该单位及其所有下级（unit_tree）可见';

-- The units visible to the current role. A view, not a function: a SQL function would run with the
-- analyst's privileges (and fail on unit_tree); a SECURITY DEFINER one would see the owner as
-- current_user and could not be inlined into the plan.
CREATE VIEW cc_analyst_units AS
SELECT t.descendant_id AS unit_id
FROM analyst_scopes s
JOIN unit_tree t ON t.ancestor_id = s.unit_id
WHERE s.role_name = current_user;
COMMENT ON VIEW cc_analyst_units IS '当前角色（current_user）按 analyst_scopes 可见的单位 id；供 analytics 视图过滤用，不授予分析员';

-- The one way to make an analyst: the login role (created if missing, no password: set it with
-- psql's \password so that it is hashed on the client), membership in coldchain_analyst, a scope.
-- Role names go through format('%I') only. A role that can already read a base table (a superuser,
-- the owner, pg_read_all_data…) is refused: a scope would promise a restriction it does not have.
CREATE FUNCTION cc_grant_analyst(p_role text, p_unit_code text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_unit bigint;
BEGIN
    IF p_role IS NULL OR octet_length(p_role) NOT BETWEEN 1 AND 63 THEN
        RAISE EXCEPTION '分析员角色名须为 1～63 字节' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_role LIKE 'pg\_%' OR p_role IN ('coldchain_analyst', 'public', 'current_user', 'session_user', 'none') THEN
        RAISE EXCEPTION '不能使用保留的角色名 %', p_role USING ERRCODE = 'reserved_name';
    END IF;
    SELECT id INTO v_unit FROM units WHERE code = p_unit_code;
    IF v_unit IS NULL THEN
        RAISE EXCEPTION '没有编码为 % 的单位', p_unit_code USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = p_role) THEN
        IF EXISTS (
            SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
              AND has_table_privilege(p_role, c.oid, 'SELECT')
        ) THEN
            RAISE EXCEPTION '角色 % 已能直接读取业务表，不能作为受辖区限制的分析员', p_role
                USING ERRCODE = 'invalid_grant_operation';
        END IF;
    ELSE
        BEGIN
            EXECUTE format('CREATE ROLE %I LOGIN', p_role);
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END IF;
    EXECUTE format('GRANT coldchain_analyst TO %I', p_role);
    INSERT INTO analyst_scopes (role_name, unit_id) VALUES (p_role, v_unit) ON CONFLICT DO NOTHING;
END
$$;
COMMENT ON FUNCTION cc_grant_analyst(text, text) IS
    '创建（或沿用）分析员登录角色，加入 coldchain_analyst，并授权其查看某单位及其下级的数据；密码请用 psql 的 \password 设置';

-- Withdraws a scope (all of the role's scopes when no unit is given); the role itself is
-- cluster-wide and may serve other databases, so dropping it is left to DROP ROLE.
CREATE FUNCTION cc_revoke_analyst(p_role text, p_unit_code text DEFAULT NULL) RETURNS integer
LANGUAGE sql AS $$
    WITH gone AS (
        DELETE FROM analyst_scopes s
        WHERE s.role_name = p_role
          AND (p_unit_code IS NULL OR s.unit_id = (SELECT id FROM units WHERE code = p_unit_code))
        RETURNING 1
    )
    SELECT count(*)::integer FROM gone
$$;
COMMENT ON FUNCTION cc_revoke_analyst(text, text) IS '收回分析员的辖区授权（不删除角色）；返回收回的条数';

REVOKE EXECUTE ON FUNCTION cc_grant_analyst(text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION cc_revoke_analyst(text, text) FROM PUBLIC;

-- Plain path: time-bounded reads of the materialised aggregates (bucket ranges across all probes)
-- would otherwise scan the whole table, whose key starts with probe_id. On TimescaleDB the
-- materialisation hypertables are chunked by bucket and excluded by chunk.
DO $do$
BEGIN
    IF cc_timescaledb() THEN
        RETURN;
    END IF;
    CREATE INDEX agg_probe_hourly_bucket_idx ON agg_probe_hourly (bucket);
    CREATE INDEX agg_probe_daily_bucket_idx ON agg_probe_daily (bucket);
END
$do$;

-- ---------------------------------------------------------------------------------------------
-- The views. Every one is security_barrier and filtered by cc_analyst_units; joins are to small
-- registry tables only, so the planner can start from the readings' time range or, for one
-- compartment, from its bindings into the (probe_id, ts) key.

CREATE SCHEMA analytics;
COMMENT ON SCHEMA analytics IS '分析员 SQL 接口：稳定、带注释、按辖区过滤的只读视图（说明见 docs/analyst.md）';

CREATE VIEW analytics.my_scope WITH (security_barrier) AS
SELECT s.role_name, s.unit_id, u.code AS unit_code, u.name AS unit_name, u.level, s.granted_at
FROM analyst_scopes s
JOIN units u ON u.id = s.unit_id
WHERE s.role_name = current_user;
COMMENT ON VIEW analytics.my_scope IS '当前登录角色被授权的辖区根单位（看不到数据时先查此视图）（my scope）';
COMMENT ON COLUMN analytics.my_scope.role_name IS '数据库角色名（current_user）';
COMMENT ON COLUMN analytics.my_scope.granted_at IS '授权时间';

CREATE VIEW analytics.units WITH (security_barrier) AS
SELECT u.id AS unit_id, u.code AS unit_code, u.name AS unit_name, u.level,
       CASE u.level WHEN 'province' THEN '省' WHEN 'city' THEN '市' WHEN 'county' THEN '县（区）'
                    ELSE '乡级接种单位' END AS level_name,
       u.parent_id,
       (SELECT a.id FROM unit_tree t JOIN units a ON a.id = t.ancestor_id
        WHERE t.descendant_id = u.id AND a.level = 'city') AS city_id,
       (SELECT a.name FROM unit_tree t JOIN units a ON a.id = t.ancestor_id
        WHERE t.descendant_id = u.id AND a.level = 'city') AS city_name,
       (SELECT a.id FROM unit_tree t JOIN units a ON a.id = t.ancestor_id
        WHERE t.descendant_id = u.id AND a.level = 'county') AS county_id,
       (SELECT a.name FROM unit_tree t JOIN units a ON a.id = t.ancestor_id
        WHERE t.descendant_id = u.id AND a.level = 'county') AS county_name,
       u.active
FROM units u
WHERE u.id IN (SELECT unit_id FROM cc_analyst_units);
COMMENT ON VIEW analytics.units IS '辖区内的单位及其所属市、县（按上下级关系，不按编码前缀）（units with hierarchy）';
COMMENT ON COLUMN analytics.units.parent_id IS '上级单位 id；可能在辖区之外';
COMMENT ON COLUMN analytics.units.city_id IS '所属市级单位 id（本身为市时即自身；直属省的县区如韩城市为空）';
COMMENT ON COLUMN analytics.units.city_name IS '所属市级单位名称';
COMMENT ON COLUMN analytics.units.county_id IS '所属县（区）级单位 id（本身为县区时即自身；省、市为空）';
COMMENT ON COLUMN analytics.units.county_name IS '所属县（区）级单位名称';
COMMENT ON COLUMN analytics.units.active IS '单位是否在用';

CREATE VIEW analytics.unit_tree WITH (security_barrier) AS
SELECT t.ancestor_id, t.descendant_id, t.depth
FROM unit_tree t
WHERE t.ancestor_id IN (SELECT unit_id FROM cc_analyst_units)
  AND t.descendant_id IN (SELECT unit_id FROM cc_analyst_units);
COMMENT ON VIEW analytics.unit_tree IS '辖区内单位的祖先—后代关系（含自身，depth=0），用于“某单位及其下级”汇总（unit closure）';
COMMENT ON COLUMN analytics.unit_tree.ancestor_id IS '上级（祖先）单位 id';
COMMENT ON COLUMN analytics.unit_tree.descendant_id IS '下级（后代）单位 id，含祖先自身';
COMMENT ON COLUMN analytics.unit_tree.depth IS '相隔层数：0 为自身，1 为直接下级';

CREATE VIEW analytics.equipment WITH (security_barrier) AS
SELECT e.id AS equipment_id, e.name AS equipment_name, e.kind,
       CASE e.kind WHEN 'fridge' THEN '冰箱' WHEN 'freezer' THEN '冰柜' WHEN 'medical_fridge' THEN '医用冷藏柜'
                   WHEN 'cold_room' THEN '冷库' WHEN 'vehicle' THEN '冷藏车' END AS kind_name,
       e.brand, e.model, e.asset_no, e.plate_no, e.status, e.commissioned_on, e.decommissioned_at,
       e.unit_id, u.code AS unit_code, u.name AS unit_name
FROM equipment e
JOIN units u ON u.id = e.unit_id
WHERE e.unit_id IN (SELECT unit_id FROM cc_analyst_units);
COMMENT ON VIEW analytics.equipment IS '辖区内的冷链设备（equipment）';
COMMENT ON COLUMN analytics.equipment.kind IS '设备类型代码：fridge / freezer / medical_fridge / cold_room / vehicle';
COMMENT ON COLUMN analytics.equipment.kind_name IS '设备类型：冰箱、冰柜、医用冷藏柜、冷库、冷藏车';
COMMENT ON COLUMN analytics.equipment.brand IS '品牌';
COMMENT ON COLUMN analytics.equipment.model IS '型号';
COMMENT ON COLUMN analytics.equipment.asset_no IS '资产编号';
COMMENT ON COLUMN analytics.equipment.plate_no IS '车牌号（冷藏车）';
COMMENT ON COLUMN analytics.equipment.status IS '状态：active 在用 / decommissioned 已停用';
COMMENT ON COLUMN analytics.equipment.commissioned_on IS '启用日期';
COMMENT ON COLUMN analytics.equipment.decommissioned_at IS '停用时间';

CREATE VIEW analytics.compartments WITH (security_barrier) AS
SELECT c.id AS compartment_id, c.name AS compartment_name, c.mode,
       CASE c.mode WHEN 'refrigerated' THEN '冷藏' ELSE '冷冻' END AS mode_name,
       c.t_min, c.t_max, c.status, c.decommissioned_at,
       c.equipment_id, e.name AS equipment_name, e.kind AS equipment_kind,
       e.unit_id, u.code AS unit_code, u.name AS unit_name
FROM compartments c
JOIN equipment e ON e.id = c.equipment_id
JOIN units u ON u.id = e.unit_id
WHERE e.unit_id IN (SELECT unit_id FROM cc_analyst_units);
COMMENT ON VIEW analytics.compartments IS '辖区内的温区及其温度上下限（compartments with limits）';
COMMENT ON COLUMN analytics.compartments.status IS '状态：active 在用 / decommissioned 已停用';
COMMENT ON COLUMN analytics.compartments.decommissioned_at IS '停用时间';
COMMENT ON COLUMN analytics.compartments.equipment_kind IS '所属设备类型代码（见 analytics.equipment.kind）';

CREATE VIEW analytics.probe_bindings WITH (security_barrier) AS
SELECT b.id AS binding_id, b.probe_id, p.serial AS probe_serial,
       b.compartment_id, c.name AS compartment_name, c.equipment_id, e.name AS equipment_name,
       e.unit_id, u.code AS unit_code, u.name AS unit_name,
       b.gateway_id, g.serial AS gateway_serial,
       lower(b.valid) AS valid_from, upper(b.valid) AS valid_until, upper_inf(b.valid) AS current,
       b.reason
FROM probe_bindings b
JOIN probes p ON p.id = b.probe_id
JOIN gateways g ON g.id = b.gateway_id
JOIN compartments c ON c.id = b.compartment_id
JOIN equipment e ON e.id = c.equipment_id
JOIN units u ON u.id = e.unit_id
WHERE e.unit_id IN (SELECT unit_id FROM cc_analyst_units);
COMMENT ON VIEW analytics.probe_bindings IS '探头绑定历史：哪个探头在何时段测量哪个温区、经由哪个网关（probe bindings）';
COMMENT ON COLUMN analytics.probe_bindings.binding_id IS '绑定记录 id';
COMMENT ON COLUMN analytics.probe_bindings.valid_from IS '绑定起始时刻（含）';
COMMENT ON COLUMN analytics.probe_bindings.valid_until IS '绑定结束时刻（不含）；为空表示当前仍有效';
COMMENT ON COLUMN analytics.probe_bindings.current IS '是否为当前有效的绑定';
COMMENT ON COLUMN analytics.probe_bindings.reason IS '绑定或换绑原因（如表单编号）';

-- Each reading with the compartment its probe was bound to at the reading's time.
CREATE VIEW analytics.readings WITH (security_barrier) AS
SELECT r.ts, r.t, r.rh, r.bat, r.received_at,
       (r.t > c.t_max::double precision OR coalesce(r.t < c.t_min::double precision, false)) AS out_of_range,
       r.probe_id, p.serial AS probe_serial,
       b.compartment_id, c.name AS compartment_name, c.mode, c.t_min, c.t_max,
       c.equipment_id, e.name AS equipment_name,
       e.unit_id, u.code AS unit_code, u.name AS unit_name,
       b.gateway_id
FROM probe_readings r
JOIN probe_bindings b ON b.probe_id = r.probe_id AND b.valid @> r.ts
JOIN probes p ON p.id = r.probe_id
JOIN compartments c ON c.id = b.compartment_id
JOIN equipment e ON e.id = c.equipment_id
JOIN units u ON u.id = e.unit_id
WHERE e.unit_id IN (SELECT unit_id FROM cc_analyst_units);
COMMENT ON VIEW analytics.readings IS
    '探头原始读数，按读数时刻的绑定归属到温区、设备、单位；查询请限定 ts 时间范围（raw readings）';
COMMENT ON COLUMN analytics.readings.ts IS '测量时刻（timestamptz）；按此列限定时间范围可走索引 / 分块裁剪';
COMMENT ON COLUMN analytics.readings.t IS '温度 ℃';
COMMENT ON COLUMN analytics.readings.rh IS '相对湿度 %（可选）';
COMMENT ON COLUMN analytics.readings.bat IS '探头电池电压 V（可选）';
COMMENT ON COLUMN analytics.readings.received_at IS '入库时刻；远晚于 ts 即为网关补传';
COMMENT ON COLUMN analytics.readings.out_of_range IS '是否超出温区当前上下限（严格超出，恰为限值不算；无下限的冷冻温区只看上限）';
COMMENT ON COLUMN analytics.readings.gateway_id IS '读数时刻绑定的网关 id';

-- Aggregates are per probe; a bucket is attributed by the binding at its first reading.
CREATE VIEW analytics.readings_hourly WITH (security_barrier) AS
SELECT h.bucket, h.n, h.min_t, h.max_t, h.avg_t, h.sum_t, h.first_ts, h.last_ts,
       NOT (b.valid @> h.last_ts) AS spans_rebinding,
       h.probe_id, p.serial AS probe_serial,
       b.compartment_id, c.name AS compartment_name, c.mode, c.t_min, c.t_max,
       c.equipment_id, e.name AS equipment_name,
       e.unit_id, u.code AS unit_code, u.name AS unit_name
FROM probe_readings_hourly h
JOIN probe_bindings b ON b.probe_id = h.probe_id AND b.valid @> h.first_ts
JOIN probes p ON p.id = h.probe_id
JOIN compartments c ON c.id = b.compartment_id
JOIN equipment e ON e.id = c.equipment_id
JOIN units u ON u.id = e.unit_id
WHERE e.unit_id IN (SELECT unit_id FROM cc_analyst_units);
COMMENT ON VIEW analytics.readings_hourly IS
    '每探头每小时聚合（含尚未物化的实时部分），带温区、设备、单位名称（hourly aggregate）';
COMMENT ON COLUMN analytics.readings_hourly.bucket IS '小时起点（UTC 整点，北京时间亦为整点）';

CREATE VIEW analytics.readings_daily WITH (security_barrier) AS
SELECT d.bucket, (d.bucket AT TIME ZONE 'Asia/Shanghai')::date AS day,
       d.n, d.min_t, d.max_t, d.avg_t, d.sum_t, d.first_ts, d.last_ts,
       NOT (b.valid @> d.last_ts) AS spans_rebinding,
       d.probe_id, p.serial AS probe_serial,
       b.compartment_id, c.name AS compartment_name, c.mode, c.t_min, c.t_max,
       c.equipment_id, e.name AS equipment_name,
       e.unit_id, u.code AS unit_code, u.name AS unit_name
FROM probe_readings_daily d
JOIN probe_bindings b ON b.probe_id = d.probe_id AND b.valid @> d.first_ts
JOIN probes p ON p.id = d.probe_id
JOIN compartments c ON c.id = b.compartment_id
JOIN equipment e ON e.id = c.equipment_id
JOIN units u ON u.id = e.unit_id
WHERE e.unit_id IN (SELECT unit_id FROM cc_analyst_units);
COMMENT ON VIEW analytics.readings_daily IS
    '每探头每日（北京时间零点分日）聚合（含实时部分），带温区、设备、单位名称（daily aggregate）';
COMMENT ON COLUMN analytics.readings_daily.bucket IS '北京时间零点（timestamptz）；按日期范围筛选请用此列以走索引';
COMMENT ON COLUMN analytics.readings_daily.day IS '北京时间日期（仅供显示与分组）';

CREATE VIEW analytics.gateway_status WITH (security_barrier) AS
SELECT s.ts, s.online, s.power, s.battery, s.rssi, s.received_at,
       s.gateway_id, g.serial AS gateway_serial,
       g.unit_id, u.code AS unit_code, u.name AS unit_name
FROM gateway_status s
JOIN gateways g ON g.id = s.gateway_id
JOIN units u ON u.id = g.unit_id
WHERE g.unit_id IN (SELECT unit_id FROM cc_analyst_units);
COMMENT ON VIEW analytics.gateway_status IS '网关状态序列：在线、供电、电池电压、信号强度（gateway status）';
COMMENT ON COLUMN analytics.gateway_status.ts IS '状态时刻';
COMMENT ON COLUMN analytics.gateway_status.online IS '是否在线';
COMMENT ON COLUMN analytics.gateway_status.power IS '供电：ac 市电 / battery 电池';
COMMENT ON COLUMN analytics.gateway_status.battery IS '网关备用电池电压 V';
COMMENT ON COLUMN analytics.gateway_status.rssi IS '信号强度 dBm';
COMMENT ON COLUMN analytics.gateway_status.received_at IS '入库时刻';
COMMENT ON COLUMN analytics.gateway_status.unit_id IS '网关所属单位 id';

-- Kept equal to alarms/rules.py (KIND_NAMES, KIND_SEVERITY, SEVERITY_NAMES); a test compares them.
CREATE VIEW analytics.alarm_kinds WITH (security_barrier) AS
SELECT k.kind, k.kind_name, k.severity,
       CASE k.severity WHEN 'critical' THEN '紧急' WHEN 'major' THEN '重要' ELSE '一般' END AS severity_name
FROM (VALUES
    ('high', '温度超上限', 'major'),
    ('low', '温度低于下限', 'major'),
    ('freeze', '冷藏冻结风险', 'critical'),
    ('cumulative', '累计超温', 'major'),
    ('wrong_place', '探头位置疑似错误', 'minor'),
    ('no_data', '探头无数据', 'major'),
    ('gateway_offline', '网关离线', 'critical'),
    ('gateway_power', '网关断电（电池供电）', 'major'),
    ('gateway_battery_low', '网关电量低', 'major'),
    ('gateway_signal', '网关信号弱', 'minor')
) AS k (kind, kind_name, severity);
COMMENT ON VIEW analytics.alarm_kinds IS '报警类型及其中文名称、默认级别（alarm kinds）';
COMMENT ON COLUMN analytics.alarm_kinds.kind IS '报警类型代码';
COMMENT ON COLUMN analytics.alarm_kinds.kind_name IS '报警类型中文名称';
COMMENT ON COLUMN analytics.alarm_kinds.severity IS '级别代码：critical / major / minor';
COMMENT ON COLUMN analytics.alarm_kinds.severity_name IS '级别：紧急 / 重要 / 一般';

CREATE VIEW analytics.alarms WITH (security_barrier) AS
SELECT a.id AS alarm_id, a.kind, k.kind_name, a.severity,
       CASE a.severity WHEN 'critical' THEN '紧急' WHEN 'major' THEN '重要' ELSE '一般' END AS severity_name,
       a.state,
       CASE a.state WHEN 'active' THEN '未处理' WHEN 'acknowledged' THEN '已确认' WHEN 'resolved' THEN '已恢复'
                    ELSE '已关闭' END AS state_name,
       a.condition_since, a.raised_at, a.found_late, a.suppressed, a.cause, a.value, a.t_min, a.t_max,
       a.acknowledged_at, a.ack_channel, a.on_site,
       round(extract(epoch FROM a.acknowledged_at - a.raised_at) / 60, 1) AS minutes_to_acknowledge,
       (SELECT min(r.level) FROM unit_responsibles r
        WHERE r.unit_id = a.unit_id AND r.user_id = a.acknowledged_by) AS acknowledged_by_level,
       (SELECT max(l.level) FROM notification_outbox o CROSS JOIN LATERAL unnest(o.levels) AS l (level)
        WHERE o.alarm_id = a.id AND o.sent_at IS NOT NULL) AS escalated_to_level,
       a.resolved_at, a.closed_at,
       a.closure ->> 'cause' AS closure_cause,
       a.closure ->> 'action' AS closure_action,
       a.closure ->> 'vaccine_disposition' AS vaccine_disposition,
       a.unit_id, u.code AS unit_code, u.name AS unit_name,
       a.equipment_id, e.name AS equipment_name,
       a.compartment_id, c.name AS compartment_name,
       a.gateway_id, g.serial AS gateway_serial,
       a.probe_id, p.serial AS probe_serial
FROM alarms a
JOIN units u ON u.id = a.unit_id
LEFT JOIN analytics.alarm_kinds k ON k.kind = a.kind
LEFT JOIN equipment e ON e.id = a.equipment_id
LEFT JOIN compartments c ON c.id = a.compartment_id
LEFT JOIN gateways g ON g.id = a.gateway_id
LEFT JOIN probes p ON p.id = a.probe_id
WHERE a.unit_id IN (SELECT unit_id FROM cc_analyst_units);
COMMENT ON VIEW analytics.alarms IS '报警及其处理经过：确认、升级到的负责人级别、恢复、关闭（alarms）';
COMMENT ON COLUMN analytics.alarms.alarm_id IS '报警 id';
COMMENT ON COLUMN analytics.alarms.kind IS '报警类型代码（见 analytics.alarm_kinds）';
COMMENT ON COLUMN analytics.alarms.kind_name IS '报警类型中文名称';
COMMENT ON COLUMN analytics.alarms.severity IS '级别代码：critical / major / minor';
COMMENT ON COLUMN analytics.alarms.severity_name IS '级别：紧急 / 重要 / 一般';
COMMENT ON COLUMN analytics.alarms.state IS '状态代码：active / acknowledged / resolved / closed';
COMMENT ON COLUMN analytics.alarms.state_name IS '状态：未处理 / 已确认 / 已恢复 / 已关闭';
COMMENT ON COLUMN analytics.alarms.condition_since IS '异常开始的时刻（读数时间），可早于 raised_at';
COMMENT ON COLUMN analytics.alarms.raised_at IS '报警产生时刻';
COMMENT ON COLUMN analytics.alarms.found_late IS '由补传数据发现（读数晚于测量 5 分钟以上到达）';
COMMENT ON COLUMN analytics.alarms.suppressed IS '不单独通知（如网关离线期间其探头的无数据）';
COMMENT ON COLUMN analytics.alarms.cause IS '系统判定的原因标记（如 gateway_offline）';
COMMENT ON COLUMN analytics.alarms.value IS '报警时（或恶化后）的温度 ℃ 等数值';
COMMENT ON COLUMN analytics.alarms.t_min IS '报警时温区下限 ℃';
COMMENT ON COLUMN analytics.alarms.t_max IS '报警时温区上限 ℃';
COMMENT ON COLUMN analytics.alarms.acknowledged_at IS '确认（到场）时刻';
COMMENT ON COLUMN analytics.alarms.ack_channel IS '确认渠道：web / wechat / api';
COMMENT ON COLUMN analytics.alarms.on_site IS '确认时是否已到场';
COMMENT ON COLUMN analytics.alarms.minutes_to_acknowledge IS '从报警到确认的分钟数（CM16 要求 30 分钟内到场）';
COMMENT ON COLUMN analytics.alarms.acknowledged_by_level IS '确认人是本单位第几级负责人（1～3）；非负责人或未确认为空';
COMMENT ON COLUMN analytics.alarms.escalated_to_level IS '已发出的通知最高到第几级负责人（1～3）；未发出为空';
COMMENT ON COLUMN analytics.alarms.resolved_at IS '恢复时刻';
COMMENT ON COLUMN analytics.alarms.closed_at IS '关闭时刻';
COMMENT ON COLUMN analytics.alarms.closure_cause IS '关闭时填写的原因';
COMMENT ON COLUMN analytics.alarms.closure_action IS '关闭时填写的处理措施';
COMMENT ON COLUMN analytics.alarms.vaccine_disposition IS '关闭时填写的疫苗处置情况';
COMMENT ON COLUMN analytics.alarms.gateway_id IS '网关 id（网关类报警）';
COMMENT ON COLUMN analytics.alarms.probe_id IS '探头 id（温度类报警）';

CREATE VIEW analytics.alarm_events WITH (security_barrier) AS
SELECT ev.id AS event_id, ev.alarm_id, ev.ts, ev.action,
       CASE ev.action WHEN 'opened' THEN '产生' WHEN 'worsened' THEN '恶化' WHEN 'cause_changed' THEN '原因变化'
                      WHEN 'acknowledged' THEN '确认' WHEN 'resolved' THEN '恢复' WHEN 'closed' THEN '关闭'
                      WHEN 'notified' THEN '已通知' WHEN 'notify_failed' THEN '通知失败' END AS action_name,
       ev.channel, ev.details,
       a.kind, a.unit_id, u.code AS unit_code, u.name AS unit_name
FROM alarm_events ev
JOIN alarms a ON a.id = ev.alarm_id
JOIN units u ON u.id = a.unit_id
WHERE a.unit_id IN (SELECT unit_id FROM cc_analyst_units);
COMMENT ON VIEW analytics.alarm_events IS '报警的每一次变化（产生、恶化、确认、恢复、关闭、通知）（alarm events）';
COMMENT ON COLUMN analytics.alarm_events.event_id IS '事件 id';
COMMENT ON COLUMN analytics.alarm_events.alarm_id IS '报警 id（analytics.alarms.alarm_id）';
COMMENT ON COLUMN analytics.alarm_events.ts IS '事件时刻';
COMMENT ON COLUMN analytics.alarm_events.action IS '事件代码：opened / worsened / cause_changed / acknowledged / resolved / closed / notified / notify_failed';
COMMENT ON COLUMN analytics.alarm_events.action_name IS '事件中文名称';
COMMENT ON COLUMN analytics.alarm_events.channel IS '渠道（确认、通知的途径）';
COMMENT ON COLUMN analytics.alarm_events.details IS '事件细节（jsonb，如温度、原因、关闭表单）';
COMMENT ON COLUMN analytics.alarm_events.kind IS '报警类型代码（见 analytics.alarm_kinds）';

CREATE VIEW analytics.stock_movements WITH (security_barrier) AS
SELECT m.id AS movement_id, m.doc_no, m.kind,
       CASE m.kind WHEN 'receipt' THEN '采购入库' WHEN 'issue' THEN '出库' WHEN 'return' THEN '退回上级'
                   WHEN 'transfer_receipt' THEN '调拨收货' WHEN 'transfer_rejection' THEN '拒收退回'
                   WHEN 'usage' THEN '接种使用' WHEN 'scrap' THEN '报废' WHEN 'adjustment' THEN '盘点调整'
                   WHEN 'reversal' THEN '冲销' END AS kind_name,
       m.occurred_at, m.posted_at, m.quantity, m.quantity * s.doses_per_vial AS doses,
       m.unit_id, u.code AS unit_code, u.name AS unit_name,
       m.counterparty_unit_id, cu.name AS counterparty_unit_name, m.supplier,
       m.lot_id, l.lot_no, l.expiry_date, l.spec_id, s.spec, s.doses_per_vial,
       s.vaccine_id, v.name AS vaccine_name, vc.name AS category_name, v.programme, mf.name AS manufacturer_name,
       m.transfer_id, m.compartment_id, m.reason, m.note, m.reverses_id
FROM stock_movements m
JOIN units u ON u.id = m.unit_id
JOIN lots l ON l.id = m.lot_id
JOIN vaccine_specs s ON s.id = l.spec_id
JOIN vaccines v ON v.id = s.vaccine_id
JOIN vaccine_categories vc ON vc.id = v.category_id
JOIN manufacturers mf ON mf.id = s.manufacturer_id
LEFT JOIN units cu ON cu.id = m.counterparty_unit_id
WHERE m.unit_id IN (SELECT unit_id FROM cc_analyst_units);
COMMENT ON VIEW analytics.stock_movements IS '出入库台账（只增不改），带疫苗、批号、品规、单位名称（ledger movements）';
COMMENT ON COLUMN analytics.stock_movements.movement_id IS '台账记录 id';
COMMENT ON COLUMN analytics.stock_movements.doc_no IS '单据号（RK 入库、CK 出库、TH 退回、DR 调入、JS 拒收退回、JZ 接种、BF 报废、PD 盘点、CX 冲销 + 单位编码 + 日期 + 序号）';
COMMENT ON COLUMN analytics.stock_movements.kind IS '类型代码：receipt / issue / return / transfer_receipt / transfer_rejection / usage / scrap / adjustment / reversal';
COMMENT ON COLUMN analytics.stock_movements.kind_name IS '类型中文名称';
COMMENT ON COLUMN analytics.stock_movements.occurred_at IS '实物出入库时刻';
COMMENT ON COLUMN analytics.stock_movements.posted_at IS '记账时刻';
COMMENT ON COLUMN analytics.stock_movements.quantity IS '对本单位库存的变动（支/瓶），入为正、出为负';
COMMENT ON COLUMN analytics.stock_movements.doses IS '变动的人份数（quantity × 每支人份数）';
COMMENT ON COLUMN analytics.stock_movements.counterparty_unit_id IS '对方单位 id（调拨、退回）；可能在辖区之外';
COMMENT ON COLUMN analytics.stock_movements.counterparty_unit_name IS '对方单位名称';
COMMENT ON COLUMN analytics.stock_movements.supplier IS '供货方（采购入库）';
COMMENT ON COLUMN analytics.stock_movements.transfer_id IS '调拨单 id';
COMMENT ON COLUMN analytics.stock_movements.compartment_id IS '入库存放的温区 id';
COMMENT ON COLUMN analytics.stock_movements.reason IS '原因（报废、盘点差异必填）';
COMMENT ON COLUMN analytics.stock_movements.note IS '备注';
COMMENT ON COLUMN analytics.stock_movements.reverses_id IS '被本条冲销的台账记录 id';

CREATE VIEW analytics.stock_balances WITH (security_barrier) AS
SELECT b.unit_id, u.code AS unit_code, u.name AS unit_name,
       b.lot_id, l.lot_no, l.expiry_date, l.spec_id, s.spec, s.doses_per_vial,
       s.vaccine_id, v.name AS vaccine_name, vc.name AS category_name, v.programme, mf.name AS manufacturer_name,
       b.on_hand, b.reserved, b.on_hand - b.reserved AS available, b.last_occurred_at
FROM stock_balances b
JOIN units u ON u.id = b.unit_id
JOIN lots l ON l.id = b.lot_id
JOIN vaccine_specs s ON s.id = l.spec_id
JOIN vaccines v ON v.id = s.vaccine_id
JOIN vaccine_categories vc ON vc.id = v.category_id
JOIN manufacturers mf ON mf.id = s.manufacturer_id
WHERE b.unit_id IN (SELECT unit_id FROM cc_analyst_units);
COMMENT ON VIEW analytics.stock_balances IS '当前库存余额（各单位各批号全部台账之和）（stock balances）';
COMMENT ON COLUMN analytics.stock_balances.on_hand IS '在库数量（支/瓶）';
COMMENT ON COLUMN analytics.stock_balances.reserved IS '待审申请预留的数量（支/瓶）';
COMMENT ON COLUMN analytics.stock_balances.available IS '可用数量 = 在库 − 预留';
COMMENT ON COLUMN analytics.stock_balances.last_occurred_at IS '最近一笔出入库的实物时刻';

-- Without the vaccinee's pseudonym and the vial's code: counts and doses are what analyses need.
CREATE VIEW analytics.vaccinations WITH (security_barrier) AS
SELECT x.id AS vaccination_id, x.vaccinated_at, x.dose_no,
       x.unit_id, u.code AS unit_code, u.name AS unit_name,
       x.lot_id, l.lot_no, l.expiry_date, l.spec_id, s.spec, s.doses_per_vial,
       s.vaccine_id, v.name AS vaccine_name, vc.name AS category_name, v.programme, mf.name AS manufacturer_name
FROM vaccinations x
JOIN units u ON u.id = x.unit_id
JOIN lots l ON l.id = x.lot_id
JOIN vaccine_specs s ON s.id = l.spec_id
JOIN vaccines v ON v.id = s.vaccine_id
JOIN vaccine_categories vc ON vc.id = v.category_id
JOIN manufacturers mf ON mf.id = s.manufacturer_id
WHERE x.unit_id IN (SELECT unit_id FROM cc_analyst_units);
COMMENT ON VIEW analytics.vaccinations IS '接种记录（不含受种者编号与追溯码），用于接种人次与损耗分析（vaccinations）';
COMMENT ON COLUMN analytics.vaccinations.vaccination_id IS '接种记录 id';
COMMENT ON COLUMN analytics.vaccinations.vaccinated_at IS '接种时刻';
COMMENT ON COLUMN analytics.vaccinations.dose_no IS '剂次';

-- ---------------------------------------------------------------------------------------------
-- Columns shared by several views get their comment here, once.

DO $do$
DECLARE
    common jsonb := $json${
        "unit_id": "单位 id",
        "unit_code": "十位单位编码",
        "unit_name": "单位名称",
        "level": "单位级别代码：province / city / county / township",
        "level_name": "单位级别：省 / 市 / 县（区）/ 乡级接种单位",
        "equipment_id": "设备 id",
        "equipment_name": "设备名称",
        "compartment_id": "温区 id",
        "compartment_name": "温区名称（如 冷藏、冷冻、车厢）",
        "mode": "温区模式代码：refrigerated 冷藏 / frozen 冷冻",
        "mode_name": "温区模式：冷藏 / 冷冻",
        "t_min": "温区下限 ℃（当前值；冷冻温区可为空，表示无下限）",
        "t_max": "温区上限 ℃（当前值）",
        "probe_id": "探头 id",
        "probe_serial": "探头编码",
        "gateway_id": "网关 id",
        "gateway_serial": "网关号（MQTT 主题中的网关编号）",
        "n": "读数条数",
        "min_t": "最低温度 ℃",
        "max_t": "最高温度 ℃",
        "avg_t": "平均温度 ℃（读数的算术平均，非时间加权）",
        "sum_t": "温度合计（用于再汇总平均值：sum_t ÷ n）",
        "first_ts": "桶内首条读数时刻",
        "last_ts": "桶内末条读数时刻",
        "spans_rebinding": "桶内读数跨越了探头换绑（按首条读数归属温区；精确数字请查 analytics.readings）",
        "lot_id": "批号 id",
        "lot_no": "疫苗批号",
        "expiry_date": "有效期至",
        "spec_id": "品规 id",
        "spec": "规格",
        "doses_per_vial": "每支（瓶）人份数",
        "vaccine_id": "疫苗 id",
        "vaccine_name": "疫苗名称",
        "category_name": "疫苗大类",
        "programme": "是否免疫规划疫苗",
        "manufacturer_name": "生产企业"
    }$json$;
    r record;
BEGIN
    FOR r IN
        SELECT c.relname, a.attname
        FROM pg_class c
        JOIN pg_namespace ns ON ns.oid = c.relnamespace
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        WHERE ns.nspname = 'analytics' AND col_description(c.oid, a.attnum) IS NULL AND common ? a.attname
    LOOP
        EXECUTE format('COMMENT ON COLUMN analytics.%I.%I IS %L', r.relname, r.attname, common ->> r.attname::text);
    END LOOP;
END
$do$;

-- Refuse to finish with an undocumented view or column: the comments are the analysts' manual.
DO $do$
DECLARE
    missing text;
BEGIN
    SELECT string_agg(format('%s.%s', c.relname, coalesce(a.attname::text, '（视图）')), '、')
    INTO missing
    FROM pg_class c
    JOIN pg_namespace ns ON ns.oid = c.relnamespace
    LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                            AND col_description(c.oid, a.attnum) IS NULL
    WHERE ns.nspname = 'analytics'
      AND (a.attname IS NOT NULL OR obj_description(c.oid, 'pg_class') IS NULL);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'analytics 中以下视图或列缺少注释：%', missing;
    END IF;
END
$do$;

-- Only these views, only reading. Views added later must be granted (and scoped) explicitly.
GRANT USAGE ON SCHEMA analytics TO coldchain_analyst;
GRANT SELECT ON ALL TABLES IN SCHEMA analytics TO coldchain_analyst;
