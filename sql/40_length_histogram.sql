-- view: length_histogram
-- requires: pairs
-- key: discipline, field, bin
-- Word counts of non-blank captions and recaptions per discipline ('*': all), in log-scale bins:
-- bin b holds counts w with floor(log10(w) * report.length_bins_per_decade) = b, i.e. words_lo <= w < words_hi.
CREATE OR REPLACE VIEW ${db}.length_histogram AS
WITH texts AS (
  SELECT discipline, 'caption' AS field, caption_words AS words FROM ${db}.pair_text WHERE NOT caption_blank
  UNION ALL
  SELECT discipline, 'recaption', recaption_words FROM ${db}.pair_text WHERE NOT recaption_blank
)
SELECT IF(grouping(discipline) = 1, '*', discipline) AS discipline, field, bin,
       power(10.0D, bin / ${length_bins_per_decade}.0D) AS words_lo,
       power(10.0D, (bin + 1) / ${length_bins_per_decade}.0D) AS words_hi,
       count(*) AS texts
FROM (SELECT *, CAST(floor(log10(words) * ${length_bins_per_decade}) AS INT) AS bin FROM texts)
GROUP BY GROUPING SETS ((discipline, field, bin), (field, bin))
