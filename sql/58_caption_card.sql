-- view: caption_card
-- requires: clip_scores, fluency_scores, text_signals, pairs
-- key: discipline, figure_type
-- The data set card's table from the lake, per discipline, per figure_type and overall ('*'): the CLIP
-- measures of clip_card for the CLIP model that scored the most pairs, the fluency measures of
-- fluency_card for the masked-LM model that scored the most (ties: the lower model id), and the text
-- signal rates of text_signal_rates beside them.
CREATE OR REPLACE VIEW ${db}.caption_card AS
WITH cm AS (
  SELECT model FROM ${db}.clip_card WHERE discipline = '*' AND figure_type = '*' ORDER BY n DESC, model LIMIT 1
), fm AS (
  SELECT model FROM ${db}.fluency_card WHERE discipline = '*' AND figure_type = '*' ORDER BY n DESC, model LIMIT 1
), c AS (
  SELECT c.* FROM ${db}.clip_card c JOIN cm ON cm.model = c.model
), f AS (
  SELECT f.* FROM ${db}.fluency_card f JOIN fm ON fm.model = f.model
)
SELECT t.discipline, t.figure_type, t.pairs,
       c.model AS clip_model, c.n AS clip_n, c.caption_mean AS clip_caption_mean,
       c.recaption_mean AS clip_recaption_mean, c.uplift_pct AS clip_uplift_pct,
       c.uplift_pct_lo AS clip_uplift_pct_lo, c.uplift_pct_hi AS clip_uplift_pct_hi,
       c.variance_change_pct AS clip_variance_change_pct, c.variance_change_pct_lo AS clip_variance_change_pct_lo,
       c.variance_change_pct_hi AS clip_variance_change_pct_hi,
       f.model AS fluency_model, f.n AS fluency_n, f.ppl_caption_median, f.ppl_recaption_median,
       f.ppl_change_pct, f.ppl_change_pct_lo, f.ppl_change_pct_hi,
       t.caption_truncated_share, t.recaption_truncated_share, t.caption_non_english_share,
       t.recaption_non_english_share, t.boilerplate_share, t.identical_share, t.recaption_repeats_share,
       t.caption_math_share_mean, t.recaption_math_share_mean
FROM ${db}.text_signal_rates t
LEFT JOIN c ON c.discipline = t.discipline AND c.figure_type = t.figure_type
LEFT JOIN f ON f.discipline = t.discipline AND f.figure_type = t.figure_type
