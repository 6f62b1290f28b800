-- view: refresh_history
-- requires: job_runs
-- key: job, run_id
-- The last report.history_runs runs of the jobs that write the lake (job_runs), newest first: when and how
-- each ended, the lines an ingest read (files parsed, lines of other files re-examined), the bytes each run's
-- writes added (all tables) and the table versions its commits made.
CREATE OR REPLACE VIEW ${db}.refresh_history AS
SELECT job, run_id, started_at, ended_at, seconds, status, exit_code,
       CAST(get_json_object(counts, '$.files_read_n') AS BIGINT) AS files_read,
       CAST(get_json_object(counts, '$.lines') AS BIGINT) AS lines,
       CAST(get_json_object(counts, '$.reexamined') AS BIGINT) AS lines_reexamined,
       coalesce(aggregate(map_values(from_json(bytes_written, 'map<string,bigint>')), 0L, (a, x) -> a + x), 0L)
         AS bytes_written,
       versions_written, settings_digest, detail
FROM ${db}.job_runs
ORDER BY started_at DESC, job, run_id
LIMIT ${history_runs}
