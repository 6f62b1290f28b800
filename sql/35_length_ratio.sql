-- view: length_ratio
-- requires: pairs
-- key: discipline, source
-- How much longer the recaption is than the raw caption, over pairs where both are non-blank, per
-- discipline and source ('*': all): the ratio of total characters and of total words, and the median
-- of the per-pair character ratio.
CREATE OR REPLACE VIEW ${db}.length_ratio AS
SELECT IF(grouping(discipline) = 1, '*', discipline) AS discipline,
       IF(grouping(source) = 1, '*', source) AS source,
       count(*) AS pairs_with_both,
       sum(recaption_chars) / sum(caption_chars) AS chars_ratio,
       sum(recaption_words) / sum(caption_words) AS words_ratio,
       percentile(recaption_chars / caption_chars, 0.5D) AS chars_ratio_p50
FROM ${db}.pair_text
WHERE NOT caption_blank AND NOT recaption_blank
GROUP BY GROUPING SETS ((discipline, source), (discipline), (source), ())
