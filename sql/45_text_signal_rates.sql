-- view: text_signal_rates
-- requires: text_signals, pairs
-- key: discipline, figure_type
-- The text signals per discipline, per figure_type and overall ('*'): the share of pairs whose caption
-- (recaption) is truncated, is not English, starts with a figure label; the share of boilerplate
-- captions, of recaptions identical to their caption and of recaptions that only repeat it; and the
-- mean math share, digit share, units, sentences and words of each text.
CREATE OR REPLACE VIEW ${db}.text_signal_rates AS
SELECT IF(grouping(discipline) = 1, '*', discipline) AS discipline,
       IF(grouping(figure_type) = 1, '*', figure_type) AS figure_type,
       count(*) AS pairs,
       avg(IF(caption_truncated, 1.0D, 0.0D)) AS caption_truncated_share,
       avg(IF(recaption_truncated, 1.0D, 0.0D)) AS recaption_truncated_share,
       avg(IF(caption_non_english, 1.0D, 0.0D)) AS caption_non_english_share,
       avg(IF(recaption_non_english, 1.0D, 0.0D)) AS recaption_non_english_share,
       avg(IF(caption_figure_prefix, 1.0D, 0.0D)) AS caption_figure_prefix_share,
       avg(IF(boilerplate, 1.0D, 0.0D)) AS boilerplate_share,
       avg(IF(identical, 1.0D, 0.0D)) AS identical_share,
       avg(IF(recaption_repeats, 1.0D, 0.0D)) AS recaption_repeats_share,
       avg(caption_math_share) AS caption_math_share_mean, avg(recaption_math_share) AS recaption_math_share_mean,
       avg(caption_digit_share) AS caption_digit_share_mean, avg(recaption_digit_share) AS recaption_digit_share_mean,
       avg(caption_units) AS caption_units_mean, avg(recaption_units) AS recaption_units_mean,
       avg(caption_sentences) AS caption_sentences_mean, avg(recaption_sentences) AS recaption_sentences_mean,
       avg(caption_words) AS caption_words_mean, avg(recaption_words) AS recaption_words_mean
FROM ${db}.pair_signals
GROUP BY GROUPING SETS ((discipline), (figure_type), ())
