-- 0008 — kept monthly cold-chain reports (CM17, CM3).
--
-- A month's report is generated once the month is final (two days after it ends) and kept here:
-- the page, the workbook and the API serve it from this table ever after, so late data or a
-- corrected registry never changes a report a county has already discussed and fed back. One row
-- per (unit, month); generators insert with ON CONFLICT DO NOTHING, so the first one stored wins
-- and concurrent schedulers cannot store two. Rows are never updated or deleted (a regeneration
-- after a fix in the report code is a deliberate act: disable the trigger in psql, delete, and let
-- the scheduler generate again — the audit of that is the psql session's).

CREATE TABLE monthly_reports (
    unit_id        bigint NOT NULL REFERENCES units (id),
    month          date NOT NULL CHECK (extract(day FROM month) = 1),
    generated_at   timestamptz NOT NULL DEFAULT now(),
    report         jsonb NOT NULL CHECK (jsonb_typeof(report) = 'object'),
    content_sha256 text NOT NULL CHECK (content_sha256 ~ '^[0-9a-f]{64}$'),
    PRIMARY KEY (unit_id, month)
);
CREATE INDEX monthly_reports_month_idx ON monthly_reports (month);
COMMENT ON TABLE monthly_reports IS '已定稿的月度冷链报告（每单位每月一份，生成后不再改变）';
COMMENT ON COLUMN monthly_reports.month IS '报告月份（该月 1 日，北京时间的自然月）';
COMMENT ON COLUMN monthly_reports.report IS '报告全文（JSON：概况、环比、各表及其中文标题与列名）';
COMMENT ON COLUMN monthly_reports.content_sha256 IS '报告全文的 SHA-256（键排序的紧凑 JSON），用于核对未被改动';

CREATE TRIGGER monthly_reports_no_update BEFORE UPDATE ON monthly_reports
    FOR EACH ROW EXECUTE FUNCTION cc_refuse_change();
CREATE TRIGGER monthly_reports_no_delete BEFORE DELETE ON monthly_reports
    FOR EACH ROW EXECUTE FUNCTION cc_refuse_change();
CREATE TRIGGER monthly_reports_no_truncate BEFORE TRUNCATE ON monthly_reports
    FOR EACH STATEMENT EXECUTE FUNCTION cc_refuse_change();
