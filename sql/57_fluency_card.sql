-- view: fluency_card
-- requires: fluency_scores, pairs
-- key: model, discipline, figure_type
-- The data set card's fluency measure per masked-LM model, per discipline, per figure_type and overall
-- ('*'), over pairs whose caption and recaption were both scored: n, the median pseudo-perplexity of
-- each and ppl_change_pct (recaption median against caption median, in percent), each with a 95%
-- interval (*_lo, *_hi) over report.bootstrap_replicates Poisson bootstrap replicates of the pairs. A
-- scored pair weighs its stratum's pairs over the stratum's scored pairs (a stratified sample stands for
-- the whole lake); the median is the weighted lower median: the smallest value whose cumulative weight
-- reaches half the total.
CREATE OR REPLACE VIEW ${db}.fluency_card AS
WITH f AS (
  SELECT x.model, p.discipline, p.figure_type, x.pair_id, x.ppl_caption AS c, x.ppl_recaption AS r,
         p.stratum_pairs / count(*) OVER (PARTITION BY x.model, p.discipline, p.figure_type) AS sw
  FROM ${db}.fluency_scores x JOIN ${db}.pair_strata p ON p.pair_id = x.pair_id
  WHERE x.ppl_caption IS NOT NULL AND x.ppl_recaption IS NOT NULL
), groups AS (
  SELECT model, discipline, '*' AS figure_type, pair_id, c, r, sw FROM f
  UNION ALL SELECT model, '*', figure_type, pair_id, c, r, sw FROM f
  UNION ALL SELECT model, '*', '*', pair_id, c, r, sw FROM f
), weighted AS (      -- replicate 0 is the data itself; 1..B weigh each pair by a Poisson(1) draw
  SELECT model, discipline, figure_type, pair_id, c, r, rep, sw * IF(rep = 0, 1, CASE WHEN u < 0.36787944117144233D THEN 0 WHEN u < 0.7357588823428847D THEN 1 WHEN u < 0.9196986029286058D THEN 2 WHEN u < 0.9810118431238463D THEN 3 WHEN u < 0.9963401531726563D THEN 4 WHEN u < 0.9994058151824183D THEN 5 WHEN u < 0.999916758850712D THEN 6 WHEN u < 0.9999897508033253D THEN 7 ELSE 8 END) AS w
  FROM (SELECT groups.*, rep, (xxhash64(pair_id, rep) & 9007199254740991) / 9007199254740992.0D AS u
        FROM groups CROSS JOIN (SELECT explode(sequence(0, ${bootstrap_replicates})) AS rep))
), vals AS (
  SELECT model, discipline, figure_type, rep, 'caption' AS field, c AS v, w, pair_id FROM weighted WHERE w > 0
  UNION ALL SELECT model, discipline, figure_type, rep, 'recaption', r, w, pair_id FROM weighted WHERE w > 0
), cum AS (
  SELECT *, sum(w) OVER (PARTITION BY model, discipline, figure_type, rep, field ORDER BY v, pair_id
                         ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS cw,
         sum(w) OVER (PARTITION BY model, discipline, figure_type, rep, field) AS tw
  FROM vals
), reps AS (
  SELECT model, discipline, figure_type, rep, min(IF(field = 'caption', v, NULL)) AS mc,
         min(IF(field = 'recaption', v, NULL)) AS mr
  FROM cum WHERE cw >= tw / 2 GROUP BY model, discipline, figure_type, rep
), stats AS (
  SELECT *, 100.0D * (mr - mc) / nullif(mc, 0.0D) AS change FROM reps
), agg AS (
  SELECT model, discipline, figure_type,
         max(IF(rep = 0, mc, NULL)) AS ppl_caption_median, max(IF(rep = 0, mr, NULL)) AS ppl_recaption_median,
         max(IF(rep = 0, change, NULL)) AS ppl_change_pct,
         percentile(mc, array(0.025D, 0.975D)) FILTER (WHERE rep > 0) AS mc_ci,
         percentile(mr, array(0.025D, 0.975D)) FILTER (WHERE rep > 0) AS mr_ci,
         percentile(change, array(0.025D, 0.975D)) FILTER (WHERE rep > 0) AS change_ci
  FROM stats GROUP BY model, discipline, figure_type
), n AS (
  SELECT model, discipline, figure_type, count(*) AS n FROM groups GROUP BY model, discipline, figure_type
)
SELECT a.model, a.discipline, a.figure_type, n.n,
       ppl_caption_median, mc_ci[0] AS ppl_caption_median_lo, mc_ci[1] AS ppl_caption_median_hi,
       ppl_recaption_median, mr_ci[0] AS ppl_recaption_median_lo, mr_ci[1] AS ppl_recaption_median_hi,
       ppl_change_pct, change_ci[0] AS ppl_change_pct_lo, change_ci[1] AS ppl_change_pct_hi
FROM agg a JOIN n ON n.model = a.model AND n.discipline = a.discipline AND n.figure_type = a.figure_type
