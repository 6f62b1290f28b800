-- view: text_signal_worst
-- requires: text_signals, pairs
-- key: signal, rank
-- For review: per text signal, report.worst_examples pairs that show it, worst first: boilerplate by the
-- most papers sharing the caption, math_heavy and digit_heavy by the highest share in the caption (over
-- 0.5), the flags (caption_truncated, recaption_truncated, non_english, identical, recaption_repeats) by the
-- longest caption; ties by pair_id. value is what they are ranked by.
CREATE OR REPLACE VIEW ${db}.text_signal_worst AS
WITH flagged AS (
  SELECT 'boilerplate' AS signal, pair_id, CAST(caption_key_papers AS DOUBLE) AS value FROM ${db}.pair_signals
  WHERE boilerplate
  UNION ALL SELECT 'math_heavy', pair_id, caption_math_share FROM ${db}.pair_signals WHERE caption_math_share > 0.5D
  UNION ALL SELECT 'digit_heavy', pair_id, caption_digit_share FROM ${db}.pair_signals WHERE caption_digit_share > 0.5D
  UNION ALL SELECT 'caption_truncated', pair_id, CAST(caption_chars AS DOUBLE) FROM ${db}.pair_signals
  WHERE caption_truncated
  UNION ALL SELECT 'recaption_truncated', pair_id, CAST(caption_chars AS DOUBLE) FROM ${db}.pair_signals
  WHERE recaption_truncated
  UNION ALL SELECT 'non_english', pair_id, CAST(caption_chars AS DOUBLE) FROM ${db}.pair_signals
  WHERE caption_non_english OR recaption_non_english
  UNION ALL SELECT 'identical', pair_id, CAST(caption_chars AS DOUBLE) FROM ${db}.pair_signals WHERE identical
  UNION ALL SELECT 'recaption_repeats', pair_id, CAST(caption_chars AS DOUBLE) FROM ${db}.pair_signals
  WHERE recaption_repeats
), ranked AS (
  SELECT *, row_number() OVER (PARTITION BY signal ORDER BY value DESC, pair_id) AS rank FROM flagged
)
SELECT r.signal, r.rank, r.pair_id, p.discipline, p.paper_id, r.value,
       left(p.caption, ${preview_chars}) AS caption, left(p.recaption, ${preview_chars}) AS recaption
FROM ranked r JOIN ${db}.pairs p ON p.pair_id = r.pair_id
WHERE r.rank <= ${worst_examples}
