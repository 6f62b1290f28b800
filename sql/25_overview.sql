-- view: overview
-- requires: pairs, quarantine
-- key: (one row)
-- One row: the size of the lake, from pair_counts' totals (the report has them cached by then).
-- input_lines = pairs + quarantined lines (every non-blank input line is in exactly one of the two).
CREATE OR REPLACE VIEW ${db}.overview AS
SELECT c.pairs, c.papers, c.images,
       (SELECT count(*) FROM ${db}.pair_counts WHERE discipline = '*' AND source <> '*') AS sources,
       (SELECT count(*) FROM ${db}.pair_counts WHERE source = '*' AND discipline <> '*') AS disciplines,
       q.quarantined_lines,
       c.pairs + q.quarantined_lines AS input_lines,
       q.quarantined_lines / nullif(c.pairs + q.quarantined_lines, 0) AS quarantined_share,
       (SELECT max(ingest_run_id) FROM ${db}.pair_text) AS latest_ingest_run_id
FROM ${db}.pair_counts c
CROSS JOIN (SELECT count(*) AS quarantined_lines FROM ${db}.quarantine) q
WHERE c.discipline = '*' AND c.source = '*'
