-- view: quarantine_reasons
-- requires: pairs, quarantine
-- key: source, ingest_run_id, reason
-- Quarantined input lines per reason, per source and per ingest run (the run that last wrote the line);
-- '*': all. share = lines / input lines (pairs + quarantined lines) of the same source or run.
CREATE OR REPLACE VIEW ${db}.quarantine_reasons AS
WITH q AS (
  SELECT IF(grouping(source) = 1, '*', source) AS source,
         IF(grouping(ingest_run_id) = 1, '*', ingest_run_id) AS ingest_run_id,
         reason, count(*) AS lines
  FROM ${db}.quarantine
  GROUP BY GROUPING SETS ((source, reason), (ingest_run_id, reason), (reason))
), inputs AS (
  SELECT IF(grouping(source) = 1, '*', source) AS source,
         IF(grouping(ingest_run_id) = 1, '*', ingest_run_id) AS ingest_run_id,
         count(*) AS input_lines
  FROM (SELECT source, ingest_run_id FROM ${db}.pair_text
        UNION ALL
        SELECT source, ingest_run_id FROM ${db}.quarantine)
  GROUP BY GROUPING SETS ((source), (ingest_run_id), ())
)
SELECT q.source, q.ingest_run_id, q.reason, q.lines, i.input_lines, q.lines / i.input_lines AS share
FROM q JOIN inputs i ON i.source = q.source AND i.ingest_run_id = q.ingest_run_id
