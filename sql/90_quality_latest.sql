-- view: quality_latest
-- requires: quality_results
-- key: suite, expectation
-- Great Expectations' verdicts from the latest validate run of each suite (a suite a later run skipped,
-- clip_scores before any scores, keeps its last run): each expectation with its severity, success, the
-- observed value (JSON), the unexpected rows' count and share of the rows checked, and a few of the
-- unexpected values (or the exception an expectation raised), as quality_results holds them.
CREATE OR REPLACE VIEW ${db}.quality_latest AS
WITH latest AS (
  SELECT suite, max(validated_at) AS validated_at FROM ${db}.quality_results GROUP BY suite
)
SELECT r.suite, r.expectation, r.suite_group, r.table_name, r.expectation_type, r.severity, r.success,
       r.observed_value, r.element_count, r.unexpected_count, r.unexpected_percent / 100 AS unexpected_share,
       r.details AS sample_values, r.validate_run_id, r.validated_at
FROM ${db}.quality_results r JOIN latest l ON l.suite = r.suite AND l.validated_at = r.validated_at
