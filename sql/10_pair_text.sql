-- view: pair_text
-- requires: pairs
-- key: pair_id
-- One row per pair: the text measures every caption view is built on. A text is blank when it is null
-- or only whitespace; chars counts characters (code points), words counts whitespace-separated tokens
-- (0 when blank); *_label says whether a non-blank text starts with a figure label ("Figure 3:").
CREATE OR REPLACE VIEW ${db}.pair_text AS
SELECT pair_id, source, discipline, paper_id, image_sha256, ingest_run_id,
       caption_blank, recaption_blank,
       coalesce(char_length(caption), 0) AS caption_chars,
       coalesce(char_length(recaption), 0) AS recaption_chars,
       IF(caption_blank, 0, size(split(regexp_replace(caption, r'^\s+|\s+$', ''), r'\s+'))) AS caption_words,
       IF(recaption_blank, 0, size(split(regexp_replace(recaption, r'^\s+|\s+$', ''), r'\s+'))) AS recaption_words,
       NOT caption_blank AND caption RLIKE r'${figure_label_regex}' AS caption_label,
       NOT recaption_blank AND recaption RLIKE r'${figure_label_regex}' AS recaption_label
FROM (SELECT *,
             coalesce(caption RLIKE r'^\s*$', true) AS caption_blank,
             coalesce(recaption RLIKE r'^\s*$', true) AS recaption_blank
      FROM ${db}.pairs)
