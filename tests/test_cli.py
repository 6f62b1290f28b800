"""What a job prints when it fails: one line and an exit code, naming the stage and the setting to raise
when it ran out of memory."""

from __future__ import annotations

import pytest

from s1mmalign import cli
from s1mmalign.ingest import Stage

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
