-- 0014 — every request made to a WeCom group robot, at the moment its answer came back (issue #17).
--
-- A robot takes at most 20 messages a minute. The budget was counted from the outbox's sent_at,
-- which is the sending transaction's start (now()): a transaction that sent several messages
-- stamped them all with one time, and 21 POSTs once arrived within 56.95 s. It is now counted on
-- this table, one row per POST (the alarm message and the follow-up that @mentions people alike),
-- stamped with clock_timestamp() after the robot answered: a request that has answered has
-- arrived, so a window counted on these times is never shorter than the robot's.
--
-- The robot's URL carries its key, a secret: rows hold its SHA-256 digest, never the URL. Rows
-- older than a day say nothing about any window and are pruned by the sender.

CREATE TABLE robot_posts (
    id            bigserial PRIMARY KEY,
    target_digest text        NOT NULL CHECK (target_digest ~ '^[0-9a-f]{64}$'),
    posted_at     timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX robot_posts_target_time ON robot_posts (target_digest, posted_at);
COMMENT ON TABLE robot_posts IS '每次向企业微信群机器人发出的请求（收到应答时刻），用于每分钟 20 条的限额；只存地址的摘要，不存密钥';

GRANT SELECT, INSERT, DELETE ON robot_posts TO coldchain_runtime;
GRANT USAGE ON SEQUENCE robot_posts_id_seq TO coldchain_runtime;
