-- view: duplicate_rates
-- requires: pairs, duplicates
-- key: source, ingest_run_id
-- Duplicate rates per source and per ingest run (the run that last wrote the pair); '*': all. A pair is
-- an exact duplicate when its image bytes also belong to another pair, a near duplicate when its image
-- is in a cluster of perceptually near images (the duplicates table, from the latest validate run).
CREATE OR REPLACE VIEW ${db}.duplicate_rates AS
WITH d AS (
  SELECT pair_id, max(IF(group_kind = 'exact', 1, 0)) AS exact, max(IF(group_kind = 'near', 1, 0)) AS near
  FROM ${db}.duplicates GROUP BY pair_id
)
SELECT IF(grouping(p.source) = 1, '*', p.source) AS source,
       IF(grouping(p.ingest_run_id) = 1, '*', p.ingest_run_id) AS ingest_run_id,
       count(*) AS pairs,
       sum(coalesce(d.exact, 0)) AS exact_duplicate_pairs,
       avg(coalesce(d.exact, 0)) AS exact_duplicate_share,
       sum(coalesce(d.near, 0)) AS near_duplicate_pairs,
       avg(coalesce(d.near, 0)) AS near_duplicate_share,
       (SELECT max(validate_run_id) FROM ${db}.duplicates) AS validate_run_id
FROM ${db}.pair_text p LEFT JOIN d ON d.pair_id = p.pair_id
GROUP BY GROUPING SETS ((p.source), (p.ingest_run_id), ())
