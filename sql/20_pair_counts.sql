-- view: pair_counts
-- requires: pairs
-- key: discipline, source
-- Pairs, papers and distinct images per discipline and source; '*' stands for all of them.
CREATE OR REPLACE VIEW ${db}.pair_counts AS
SELECT IF(grouping(discipline) = 1, '*', discipline) AS discipline,
       IF(grouping(source) = 1, '*', source) AS source,
       count(*) AS pairs,
       count(DISTINCT paper_id) AS papers,
       count(DISTINCT image_sha256) AS images
FROM ${db}.pair_text
GROUP BY GROUPING SETS ((discipline, source), (discipline), (source), ())
