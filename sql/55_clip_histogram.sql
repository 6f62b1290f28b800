-- view: clip_histogram
-- requires: clip_scores
-- key: model, discipline, field, bin
-- CLIP scores of captions and recaptions per model and discipline ('*': all), in bins of
-- report.score_bin_width: bin b holds scores s with floor(s / width) = b, i.e. score_lo <= s < score_hi.
CREATE OR REPLACE VIEW ${db}.clip_histogram AS
WITH s AS (
  SELECT model, discipline, 'caption' AS field, score_caption AS score FROM ${db}.clip_scores
  WHERE score_caption IS NOT NULL AND score_recaption IS NOT NULL
  UNION ALL
  SELECT model, discipline, 'recaption', score_recaption FROM ${db}.clip_scores
  WHERE score_caption IS NOT NULL AND score_recaption IS NOT NULL
)
SELECT model, IF(grouping(discipline) = 1, '*', discipline) AS discipline, field, bin,
       bin * ${score_bin_width}D AS score_lo, (bin + 1) * ${score_bin_width}D AS score_hi,
       count(*) AS pairs
FROM (SELECT *, CAST(floor(score / ${score_bin_width}D) AS INT) AS bin FROM s)
GROUP BY GROUPING SETS ((model, discipline, field, bin), (model, field, bin))
