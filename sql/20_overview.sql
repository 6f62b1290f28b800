-- view: overview
-- requires: pairs, quarantine
-- key: (one row)
-- One row: the size of the lake. input_lines = pairs + quarantined lines (every non-blank input line
-- is in exactly one of the two).
CREATE OR REPLACE VIEW ${db}.overview AS
SELECT p.pairs, p.papers, p.images, p.sources, p.disciplines, q.quarantined_lines,
       p.pairs + q.quarantined_lines AS input_lines,
       q.quarantined_lines / nullif(p.pairs + q.quarantined_lines, 0) AS quarantined_share,
       p.latest_ingest_run_id
FROM (SELECT count(*) AS pairs, count(DISTINCT paper_id) AS papers, count(DISTINCT image_sha256) AS images,
             count(DISTINCT source) AS sources, count(DISTINCT discipline) AS disciplines,
             max(ingest_run_id) AS latest_ingest_run_id
      FROM ${db}.pair_text) p
CROSS JOIN (SELECT count(*) AS quarantined_lines FROM ${db}.quarantine) q
