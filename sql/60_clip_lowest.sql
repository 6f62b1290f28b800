-- view: clip_lowest
-- requires: clip_scores, pairs
-- key: model, discipline, rank
-- For review: per model and discipline, the report.review_pairs pairs whose better caption still aligns
-- worst with the image (lowest greatest(score_caption, score_recaption)): likely a wrong or unreadable
-- figure, or a caption about something else. Ties go to the lower pair_id.
CREATE OR REPLACE VIEW ${db}.clip_lowest AS
WITH ranked AS (
  SELECT model, discipline, pair_id, score_caption, score_recaption,
         greatest(score_caption, score_recaption) AS best_score,
         row_number() OVER (PARTITION BY model, discipline
                            ORDER BY greatest(score_caption, score_recaption), pair_id) AS rank
  FROM ${db}.clip_scores
  WHERE score_caption IS NOT NULL AND score_recaption IS NOT NULL
)
SELECT r.model, r.discipline, r.rank, r.pair_id, p.source, p.paper_id, p.image_path,
       r.score_caption, r.score_recaption, r.best_score,
       left(p.caption, ${preview_chars}) AS caption, left(p.recaption, ${preview_chars}) AS recaption
FROM ranked r JOIN ${db}.pairs p ON p.pair_id = r.pair_id AND p.discipline = r.discipline
WHERE r.rank <= ${review_pairs}
