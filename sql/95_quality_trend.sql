-- view: quality_trend
-- requires: quality_results
-- key: validate_run_id
-- The last report.quality_runs validate runs (default 20), newest first: expectations evaluated, how
-- many failed per severity, and which (suite:expectation, sorted).
CREATE OR REPLACE VIEW ${db}.quality_trend AS
SELECT validate_run_id, max(validated_at) AS validated_at, count(*) AS expectations,
       sum(IF(NOT success AND severity = 'critical', 1, 0)) AS failed_critical,
       sum(IF(NOT success AND severity = 'warning', 1, 0)) AS failed_warning,
       concat_ws(', ', sort_array(collect_list(IF(success, NULL, concat(suite, ':', expectation))))) AS failed
FROM ${db}.quality_results
GROUP BY validate_run_id
ORDER BY validated_at DESC
LIMIT ${quality_runs}
