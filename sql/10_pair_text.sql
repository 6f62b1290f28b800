-- view: pair_text
-- requires: pairs
-- key: pair_id
-- One row per pair: the text measures every caption view is built on. A text is blank when it is null
-- or only whitespace (no word); chars counts characters (code points), words counts whitespace-separated
-- tokens (runs of non-whitespace); *_label says whether a non-blank text starts with a figure label
-- ("Figure 3:").
CREATE OR REPLACE VIEW ${db}.pair_text AS
SELECT pair_id, source, discipline, paper_id, image_sha256, ingest_run_id,
       caption_words = 0 AS caption_blank, recaption_words = 0 AS recaption_blank,
       coalesce(char_length(caption), 0) AS caption_chars,
       coalesce(char_length(recaption), 0) AS recaption_chars,
       caption_words, recaption_words,
       caption_words > 0 AND caption RLIKE r'${figure_label_regex}' AS caption_label,
       recaption_words > 0 AND recaption RLIKE r'${figure_label_regex}' AS recaption_label
FROM (SELECT *,
             coalesce(regexp_count(caption, r'\S+'), 0) AS caption_words,
             coalesce(regexp_count(recaption, r'\S+'), 0) AS recaption_words
      FROM ${db}.pairs)
