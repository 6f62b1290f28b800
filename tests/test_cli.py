"""What a job prints when it fails: one line and an exit code, naming the stage and the setting to raise
when it ran out of memory."""

from __future__ import annotations

import json
import os

import pytest

from helpers import lake_at, run_job
from s1mmalign import cli
from s1mmalign.stages import Stage

# The text Spark gives the driver when a task's heap ran out (abridged from a real local-mode run).
JAVA_OOM = ("An error occurred while calling o412.save.\n: org.apache.spark.SparkException: Job aborted due to "
            "stage failure: Task 1 in stage 71.0 failed 1 times, most recent failure: Lost task 1.0 in stage 71.0 "
            "(TID 153) (192.0.2.2 executor driver): java.lang.OutOfMemoryError: Java heap space\n\tat org.apache")
EXECUTOR_LOST = ("Job aborted due to stage failure: Task 3 in stage 9.0 failed 4 times: ExecutorLostFailure "
                 "(executor 2 exited caused by one of the running tasks) Reason: Remote RPC client "
                 "disassociated. Command exited with code 52, exit code: 52")


def run_main(capsys, error: BaseException) -> tuple[int, list[str]]:
    def body() -> int:
        raise error

    with pytest.raises(SystemExit) as done:
        cli.main("ingest", body)
    return done.value.code, capsys.readouterr().err.strip().splitlines()


def stage_error(error: Exception, stage: str) -> Exception:
    with pytest.raises(type(error)) as raised:
        with Stage(stage):
            raise error
    return raised.value


def test_a_stage_tags_the_error_that_leaves_it_and_an_outer_stage_keeps_the_inner_name():
    err = stage_error(RuntimeError("boom"), "archives")
    assert err.stage == "archives"
    with pytest.raises(RuntimeError) as raised:
        with Stage("write"):
            raise err
    assert raised.value.stage == "archives"


def test_a_long_stage_logs_progress_from_sparks_status_tracker_and_stops_when_done(spark, caplog):
    import logging
    import re
    import time

    from s1mmalign import stages

    def slow(x):
        time.sleep(0.4)
        return x

    def progress_lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress slow")]

    before = stages.PROGRESS["seconds"]
    try:
        with caplog.at_level(logging.INFO, logger="s1mmalign"):
            stages.progress_every(0)
            with Stage("slow") as st:               # 0: no progress line
                spark.sparkContext.parallelize(range(4), 4).map(slow).count()
                st.done(4, "rows")
            assert progress_lines() == []
            stages.progress_every(0.3)
            with Stage("slow") as st:
                assert spark.sparkContext.parallelize(range(8), 8).map(slow).count() == 8
                st.done(8, "rows")
            lines = progress_lines()
            time.sleep(1)
            assert progress_lines() == lines, "progress lines after the stage was done"
    finally:
        stages.progress_every(before)
    counts = [tuple(map(int, m.groups())) for m in (re.search(r"tasks (\d+)/(\d+) ", x) for x in lines) if m]
    assert counts and all(total == 8 for _, total in counts), lines
    assert any(0 < done < 8 for done, _ in counts), f"never seen moving: {lines}"
    assert any(re.search(r"ETA \d+s", x) for x in lines) and all("tasks/s" in x for x in lines if "tasks " in x)


def test_jvm_heap_exhausted_names_the_stage_and_the_setting(capsys):
    code, lines = run_main(capsys, stage_error(RuntimeError(JAVA_OOM), "archives"))
    assert code == 1 and len(lines) == 1
    assert lines[0].startswith("ingest: out of memory in stage archives: the Spark JVM's heap ran out")
    assert "spark.driver.memory" in lines[0] and "spark.executor.memory" in lines[0]


def test_an_executor_killed_by_its_heap_is_out_of_memory_too(capsys):
    code, lines = run_main(capsys, stage_error(RuntimeError(EXECUTOR_LOST), "write"))
    assert code == 1 and lines == [lines[0]] and "out of memory in stage write" in lines[0]


def test_a_python_worker_out_of_memory_names_the_python_settings(capsys):
    code, lines = run_main(capsys, stage_error(MemoryError(), "archives"))
    assert code == 1 and len(lines) == 1
    assert "out of memory in stage archives: a Python worker ran out" in lines[0]
    assert "spark.executor.pyspark.memory" in lines[0] and "ingest.archive_slice_bytes" in lines[0]


def test_other_failures_keep_their_type_and_first_line(capsys):
    code, lines = run_main(capsys, stage_error(ValueError("bad thing\nmore detail"), "resolve"))
    assert (code, lines) == (1, ["ingest: failed: ValueError: bad thing"])
    code, lines = run_main(capsys, RuntimeError("exit code: 520 is not 52"))
    assert lines == ["ingest: failed: RuntimeError: exit code: 520 is not 52"]


def test_a_jvm_error_is_its_java_exception_not_py4js_wrapper(capsys):
    error = RuntimeError("An error occurred while calling o77.load.\n: org.apache.spark.SparkException: "
                         "[FAILED_READ_FILE.NO_HINT] Encountered error while reading file x.json.\n\tat org.apache")
    code, lines = run_main(capsys, error)
    assert code == 1 and len(lines) == 1
    assert lines[0] == ("ingest: failed: org.apache.spark.SparkException: [FAILED_READ_FILE.NO_HINT] "
                        "Encountered error while reading file x.json.")


# --- what stops a job before Spark starts: one line, exit 2 (plain python: no JVM is started) ------------

def one_line_exit_2(proc) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    return lines[0]


def test_a_second_job_on_a_held_lake_is_one_line(tmp_path, faults_corpus, cfg):
    import subprocess
    import sys

    from helpers import REPO, run_job

    lake = tmp_path / "lake"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, 'lib');"
                               "from s1mmalign import config; from s1mmalign.lake import root, session; "
                               "session.take_lease(root.Lake.open(sys.argv[1], config.load(), existing=False));"
                               "print('held', flush=True);"
                               "time.sleep(120)", str(lake)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        line = one_line_exit_2(run_job("ingest", "--source", str(faults_corpus), "--lake", str(lake), submit=False))
        assert "is being written by -c pid" in line and f"pid {holder.pid} on" in line, line
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone (killed, as kill -9 would): its lease is taken over at once, on this host
    from s1mmalign.lake import lease, session

    session.take_lease(lake_at(lake, cfg))
    assert json.loads((lake / lease.LEASE_FILE).read_text())["pid"] == os.getpid()    # ours now
    lease.release_all()
    assert not (lake / lease.LEASE_FILE).exists()


def test_a_lake_that_cannot_be_written_is_one_error(tmp_path, cfg):
    from s1mmalign.lake import session

    (tmp_path / "file").write_text("x")
    with pytest.raises(session.LakeBusy, match="cannot be written"):
        session.take_lease(lake_at(tmp_path / "file" / "lake", cfg))


def test_a_damaged_delta_log_is_one_line(tmp_path, faults_corpus):
    from helpers import run_job

    log_dir = tmp_path / "lake" / "pairs" / "_delta_log"
    log_dir.mkdir(parents=True)
    (log_dir / f"{0:020d}.json").write_text('{"commitInfo": {}}\n{"protocol": {"minReaderVers')   # cut short
    line = one_line_exit_2(run_job("ingest", "--source", str(faults_corpus), "--lake", str(tmp_path / "lake"),
                                   submit=False))
    assert "damaged Delta log: pairs/_delta_log/00000000000000000000.json" in line


@pytest.mark.parametrize("text, message", [
    ("ingest:\n  jsonl_chunk_bytes: -5\n",
     "setting ingest.jsonl_chunk_bytes must be between 1 and 17179869184, got -5"),
    ("ingest:\n  max_line_bytes: lots\n", "setting ingest.max_line_bytes must be an int, got 'lots'"),
    ("ingest:\n  formats: PNG\n", "setting ingest.formats must be a list"),
    ("ingest: [\n  x: 1\n", "is not valid YAML"),
    ("ingest:\n  staging_dir: ''\n", "setting ingest.staging_dir must be a folder under the lake, got ''"),
    ("ingest:\n  staging_dir: ..\n", "setting ingest.staging_dir must be a folder under the lake, got '..'"),
    ("spark:\n  shuffle_partitions: 100000000000000000000\n", "spark.shuffle_partitions must be between 1 and"),
])
def test_a_bad_setting_is_one_line_before_spark_starts(tmp_path, faults_corpus, text, message):
    from helpers import run_job

    conf = tmp_path / "bad.yaml"
    conf.write_text(text)
    line = one_line_exit_2(run_job("ingest", "--source", str(faults_corpus), "--lake", str(tmp_path / "lake"),
                                   "--conf", str(conf), submit=False))
    assert message in line
    assert not (tmp_path / "lake").exists()      # nothing was started, nothing written


@pytest.mark.parametrize("signum, name", [(2, "SIGINT"), (15, "SIGTERM")])
def test_a_signal_is_one_line_of_the_jobs_own_and_128_plus_its_number(signum, name):
    """cli.main's handler (stages.watch_signals): one line, the exit code of a process the signal stopped,
    and nothing that breaks afterwards (here a thread's and a cleanup's errors) is printed."""
    import signal
    import subprocess
    import sys
    import time

    body = ("import sys, threading, time\n"
            "from s1mmalign import cli\n"
            "def body():\n"
            "    threading.Thread(target=lambda: (time.sleep(2), 1 / 0)).start()\n"
            "    try:\n"
            "        print('ready', flush=True)\n"
            "        time.sleep(60)\n"
            "    finally:\n"
            "        raise RuntimeError('cleanup broke too')\n"
            "cli.main('demo', body)\n")
    proc = subprocess.Popen([sys.executable, "-c", body], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signum
    assert err.splitlines() == [f"demo: stopped by {name}: nothing after its last complete commit is kept; run it "
                                f"again to finish (a re-run converges to one clean run's tables)"], err
    assert signal.Signals(signum).name == name


# --- bad flags: one line and exit 2, before any JVM starts (plain python, as spark-submit would run them) ---

@pytest.mark.parametrize("args, message", [
    (["--lake", "L"], "the following arguments are required: --source"),
    (["--source", "/nonexistent/corpus", "--lake", "L"], "is not a folder"),
    (["--source", ".", "--lake", "L", "--conf", "/nonexistent.yaml"], "config file not found"),
    (["--source", ".", "--lake", "L", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_flags_are_one_clear_line(args, message, tmp_path):
    proc = run_job("ingest", *args, submit=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_folder_without_sources_is_one_clear_line(tmp_path):
    proc = run_job("ingest", "--source", str(tmp_path), "--lake", str(tmp_path / "lake"), submit=False)
    assert proc.returncode == 2
    assert "no S1-MMAlign sources under" in proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["--lake", "/nonexistent/lake"], "--lake /nonexistent/lake is not a folder"),
    (["--lake", "TMP"], "table(s): run jobs/ingest.py first"),
    (["--lake", "TMP", "--bogus"], "unrecognized arguments: --bogus"),
    (["--lake", "TMP", "--conf", "/nonexistent.yaml"], "config file not found"),
    (["--lake", "ftp://host/lake"], "--lake ftp://host/lake: use a local folder or s3://bucket/prefix"),
    (["--lake", "s3:///lake"], "use a local folder or s3://bucket/prefix"),
])
def test_validate_bad_flags_are_one_clear_line(args, message, tmp_path):
    proc = run_job("validate", *[str(tmp_path) if a == "TMP" else a for a in args], submit=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert message in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "_catalog").exists(), "Spark started for a lake it cannot validate"


@pytest.mark.parametrize("args, message", [
    (["--lake", "TMP"], "--out DIR is required (or --views-only)"),
    (["--lake", "/nonexistent/lake", "--out", "OUT"], "--lake /nonexistent/lake is not a folder"),
    (["--lake", "TMP", "--out", "OUT"], "no pairs, quarantine table(s): run jobs/ingest.py first"),
])
def test_report_bad_flags_are_one_clear_line(args, message, tmp_path):
    proc = run_job("report", *[str(tmp_path) if a == "TMP" else str(tmp_path / "out") if a == "OUT" else a
                               for a in args], submit=False)
    assert proc.returncode == 2
    assert message in proc.stderr.strip().splitlines()[-1], proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "_catalog").exists()
