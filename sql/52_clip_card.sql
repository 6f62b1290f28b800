-- view: clip_card
-- requires: clip_scores, pairs
-- key: model, discipline, figure_type
-- The data set card's CLIP measures per model, per discipline, per figure_type and overall ('*'), over
-- pairs whose caption and recaption were both scored: n, the mean of each, uplift_pct (recaption mean
-- over caption mean, in percent of it) and variance_change_pct (recaption variance against caption
-- variance), each with a 95% interval (*_lo, *_hi): the 2.5th and 97.5th percentiles over
-- report.bootstrap_replicates Poisson bootstrap replicates. Pairs are resampled in report.bootstrap_blocks
-- random blocks (by pair_id hash) whose sums are weighted: a block of one pair is the plain Poisson
-- bootstrap, and the cost stays that of one pass however many pairs there are.
CREATE OR REPLACE VIEW ${db}.clip_card AS
WITH s AS (
  SELECT c.model, p.discipline, p.figure_type, c.score_caption AS c, c.score_recaption AS r,
         pmod(xxhash64(c.pair_id), ${bootstrap_blocks}) AS block
  FROM ${db}.clip_scores c JOIN ${db}.pair_strata p ON p.pair_id = c.pair_id
  WHERE c.score_caption IS NOT NULL AND c.score_recaption IS NOT NULL
), blocks AS (
  SELECT model, IF(grouping(discipline) = 1, '*', discipline) AS discipline,
         IF(grouping(figure_type) = 1, '*', figure_type) AS figure_type, block,
         count(*) AS n, sum(c) AS sc, sum(c * c) AS scc, sum(r) AS sr, sum(r * r) AS srr
  FROM s GROUP BY GROUPING SETS ((model, discipline, block), (model, figure_type, block), (model, block))
), weighted AS (      -- replicate 0 is the data itself; 1..B weigh each block by a Poisson(1) draw
  SELECT b.*, rep, IF(rep = 0, 1, CASE WHEN u < 0.36787944117144233D THEN 0 WHEN u < 0.7357588823428847D THEN 1 WHEN u < 0.9196986029286058D THEN 2 WHEN u < 0.9810118431238463D THEN 3 WHEN u < 0.9963401531726563D THEN 4 WHEN u < 0.9994058151824183D THEN 5 WHEN u < 0.999916758850712D THEN 6 WHEN u < 0.9999897508033253D THEN 7 ELSE 8 END) AS w
  FROM (SELECT blocks.*, rep,
               (xxhash64(block, rep) & 9007199254740991) / 9007199254740992.0D AS u
        FROM blocks CROSS JOIN (SELECT explode(sequence(0, ${bootstrap_replicates})) AS rep)) b
), reps AS (
  SELECT model, discipline, figure_type, rep, sum(w * n) AS n, sum(w * sc) / nullif(sum(w * n), 0) AS cm,
         sum(w * sr) / nullif(sum(w * n), 0) AS rm,
         (sum(w * scc) - sum(w * sc) * sum(w * sc) / nullif(sum(w * n), 0)) / nullif(sum(w * n) - 1, 0) AS cv,
         (sum(w * srr) - sum(w * sr) * sum(w * sr) / nullif(sum(w * n), 0)) / nullif(sum(w * n) - 1, 0) AS rv
  FROM weighted GROUP BY model, discipline, figure_type, rep
), stats AS (
  SELECT *, 100.0D * (rm - cm) / nullif(abs(cm), 0.0D) AS uplift,
         100.0D * (rv - cv) / nullif(cv, 0.0D) AS vchange
  FROM (SELECT model, discipline, figure_type, rep, n, cm, rm,
               IF(n > 1, greatest(cv, 0.0D), NULL) AS cv, IF(n > 1, greatest(rv, 0.0D), NULL) AS rv
        FROM reps WHERE n > 0)
), agg AS (
  SELECT model, discipline, figure_type,
         max(IF(rep = 0, n, NULL)) AS n, max(IF(rep = 0, cm, NULL)) AS caption_mean,
         max(IF(rep = 0, rm, NULL)) AS recaption_mean, max(IF(rep = 0, uplift, NULL)) AS uplift_pct,
         max(IF(rep = 0, vchange, NULL)) AS variance_change_pct,
         percentile(cm, array(0.025D, 0.975D)) FILTER (WHERE rep > 0) AS cm_ci,
         percentile(rm, array(0.025D, 0.975D)) FILTER (WHERE rep > 0) AS rm_ci,
         percentile(uplift, array(0.025D, 0.975D)) FILTER (WHERE rep > 0) AS uplift_ci,
         percentile(vchange, array(0.025D, 0.975D)) FILTER (WHERE rep > 0) AS vchange_ci
  FROM stats GROUP BY model, discipline, figure_type
)
SELECT model, discipline, figure_type, CAST(n AS BIGINT) AS n,
       caption_mean, cm_ci[0] AS caption_mean_lo, cm_ci[1] AS caption_mean_hi,
       recaption_mean, rm_ci[0] AS recaption_mean_lo, rm_ci[1] AS recaption_mean_hi,
       uplift_pct, uplift_ci[0] AS uplift_pct_lo, uplift_ci[1] AS uplift_pct_hi,
       variance_change_pct, IF(variance_change_pct IS NULL, NULL, vchange_ci[0]) AS variance_change_pct_lo,
       IF(variance_change_pct IS NULL, NULL, vchange_ci[1]) AS variance_change_pct_hi
FROM agg
