-- view: caption_lengths
-- requires: pairs
-- key: discipline, source, field
-- Per discipline and source ('*': all) and per field (caption = the raw caption, recaption = the AI
-- caption): how many are blank or short (under report.short_chars characters, blank included), and the
-- length of the non-blank ones in characters and words: mean and exact percentiles p5, p50, p95
-- (linear interpolation). label_share: of the non-blank texts, those starting with a figure label.
CREATE OR REPLACE VIEW ${db}.caption_lengths AS
WITH texts AS (
  SELECT discipline, source, 'caption' AS field, caption_blank AS blank, caption_chars AS chars,
         caption_words AS words, caption_label AS label
  FROM ${db}.pair_text
  UNION ALL
  SELECT discipline, source, 'recaption', recaption_blank, recaption_chars, recaption_words, recaption_label
  FROM ${db}.pair_text
), agg AS (
  SELECT IF(grouping(discipline) = 1, '*', discipline) AS discipline,
         IF(grouping(source) = 1, '*', source) AS source,
         field,
         count(*) AS pairs,
         count_if(NOT blank) AS present,
         avg(IF(blank, 1.0D, 0.0D)) AS empty_share,
         avg(IF(blank OR chars < ${short_chars}, 1.0D, 0.0D)) AS empty_or_short_share,
         count_if(label) / nullif(count_if(NOT blank), 0) AS label_share,
         avg(IF(blank, NULL, chars)) AS chars_mean,
         percentile(IF(blank, NULL, chars), array(0.05D, 0.5D, 0.95D)) AS chars_p,
         avg(IF(blank, NULL, words)) AS words_mean,
         percentile(IF(blank, NULL, words), array(0.05D, 0.5D, 0.95D)) AS words_p
  FROM texts
  GROUP BY GROUPING SETS ((discipline, source, field), (discipline, field), (source, field), (field))
)
SELECT discipline, source, field, pairs, present, empty_share, empty_or_short_share, label_share,
       chars_mean, chars_p[0] AS chars_p5, chars_p[1] AS chars_p50, chars_p[2] AS chars_p95,
       words_mean, words_p[0] AS words_p5, words_p[1] AS words_p50, words_p[2] AS words_p95
FROM agg
