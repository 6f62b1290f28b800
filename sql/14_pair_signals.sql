-- view: pair_signals
-- requires: text_signals, pairs
-- key: pair_id
-- One row per pair with text signals (score_text): the text_signals columns, the pair's figure_type
-- and paper, caption_key_papers = how many papers hold the same caption text (its label aside),
-- boilerplate = that is text.boilerplate_papers or more, and *_non_english = a language was detected and
-- it is not English (a text too short to tell is not counted).
CREATE OR REPLACE VIEW ${db}.pair_signals AS
WITH s AS (
  SELECT t.*, p.figure_type, p.paper_id
  FROM ${db}.text_signals t JOIN ${db}.pair_strata p ON p.pair_id = t.pair_id
), k AS (
  SELECT caption_key, count(DISTINCT paper_id) AS papers FROM s WHERE caption_key IS NOT NULL GROUP BY caption_key
)
SELECT s.*, k.papers AS caption_key_papers, coalesce(k.papers >= ${boilerplate_papers}, false) AS boilerplate,
       coalesce(s.caption_lang <> 'en', false) AS caption_non_english,
       coalesce(s.recaption_lang <> 'en', false) AS recaption_non_english
FROM s LEFT JOIN k ON k.caption_key = s.caption_key
