-- view: clip_stats
-- requires: clip_scores
-- key: model, discipline
-- CLIP alignment per model and discipline ('*': all), over pairs whose caption and recaption were both
-- scored: mean, sample standard deviation and sample variance of each; uplift_pct = how much higher the
-- recaption mean is than the caption mean, in percent of the caption mean; variance_change_pct = the
-- recaption variance against the caption variance, in percent (the data set card reports +18.21% and
-- -27.77% overall); recaption_higher_share = pairs whose recaption scores higher than their caption.
CREATE OR REPLACE VIEW ${db}.clip_stats AS
WITH s AS (
  SELECT model, discipline,
         IF(score_caption IS NOT NULL AND score_recaption IS NOT NULL, score_caption, NULL) AS c,
         IF(score_caption IS NOT NULL AND score_recaption IS NOT NULL, score_recaption, NULL) AS r
  FROM ${db}.clip_scores
), agg AS (
  SELECT model, IF(grouping(discipline) = 1, '*', discipline) AS discipline,
         count(c) AS pairs_scored,
         count(*) - count(c) AS pairs_unscored,
         avg(c) AS caption_mean, stddev_samp(c) AS caption_std, var_samp(c) AS caption_var,
         avg(r) AS recaption_mean, stddev_samp(r) AS recaption_std, var_samp(r) AS recaption_var,
         avg(CASE WHEN c IS NULL THEN NULL WHEN r > c THEN 1.0D ELSE 0.0D END) AS recaption_higher_share
  FROM s
  GROUP BY GROUPING SETS ((model, discipline), (model))
)
SELECT model, discipline, pairs_scored, pairs_unscored,
       caption_mean, caption_std, caption_var, recaption_mean, recaption_std, recaption_var,
       100.0D * (recaption_mean - caption_mean) / nullif(abs(caption_mean), 0.0D) AS uplift_pct,
       100.0D * (recaption_var - caption_var) / nullif(caption_var, 0.0D) AS variance_change_pct,
       recaption_higher_share
FROM agg
