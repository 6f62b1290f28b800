"""Airflow 3 DAGs for an s1mmalign lake: the scheduled, incremental refresh, and weekly maintenance.

s1mmalign_refresh:  plan -> ingest -> score_text -> validate -> [score_clip] -> [score_fluency] -> report
  plan        jobs/plan.py: which source files are new or changed against ingest_log; none: the rest of
              the run is skipped (a short-circuit, visible in the grid) and no table changes
  ingest, score_text, validate, score_clip, score_fluency, report: the project's jobs through
              SparkSubmitOperator, with the py-files artifact and jars of build.sh, master and conf from the
              Airflow connection. score_text (text signals, no model) runs before validate, whose
              text_signals suite reads them. validate exits 1 when a critical expectation fails: the task
              fails (its log names the expectations), nothing downstream runs, the run is failed.
              score_clip runs only when a CLIP checkpoint is configured, score_fluency (after it, whether
              or not it ran) only when a fluency checkpoint is; both in the GPU pool.
s1mmalign_maintain: jobs/maintain.py on its own (weekly) schedule, then validate --full (near duplicates
              among every image hash anew; the daily validate compares only the new hashes with the
              stored band keys).

Every task is idempotent (every job converges when re-run), so a retry or a cleared task is safe; every
table a task writes is an Airflow asset (outlet): other DAGs can schedule on `s1mmalign.pairs` changing.
One run at a time per DAG (one writer per lake; the two DAGs meet at the lake's lease, which makes the
later one wait through its retries). Defaults: conf/airflow.yaml; each is a DAG param.
"""

from __future__ import annotations

import os
import subprocess
from datetime import timedelta
from pathlib import Path

import pendulum
import yaml
from airflow.exceptions import AirflowException
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.providers.standard.operators.python import ShortCircuitOperator
from airflow.sdk import DAG, Asset, Param

HOME = Path(os.environ.get("S1MMALIGN_HOME") or Path(__file__).resolve().parents[1])
VENV = HOME / ".venv"                         # the project's venv (build.sh): pyspark, the jobs' packages
DEFAULTS = yaml.safe_load((HOME / "conf" / "airflow.yaml").read_text())
TABLES_OF = {                                 # the tables each job writes (schemas/tables.yaml's `job`)
    "ingest": ["pairs", "images", "quarantine", "ingest_log", "image_index"],
    "validate": ["duplicates", "quality_results"],
    "score_clip": ["clip_scores"],
    "score_text": ["text_signals"],
    "score_fluency": ["fluency_scores"],
    "maintain": ["pairs", "images", "quarantine", "ingest_log", "image_index", "duplicates", "quality_results",
                 "clip_scores", "text_signals", "fluency_scores"],
}
NOTHING_TO_DO = 99                            # jobs/plan.py's exit code when no source file changed


def asset(table: str) -> Asset:
    return Asset(name=f"s1mmalign.{table}", uri=f"s1mmalign://lake/{table}")


def _path(value: str) -> str:
    """A param as the jobs take it: URIs as they are, relative paths under the checkout."""
    return value if "://" in value or os.path.isabs(value) else str(HOME / value)


def _env() -> dict[str, str]:
    """The pip-installed spark-submit finds SPARK_HOME through the first python3 on PATH (in a task,
    Airflow's, which has no pyspark): name the project's venv explicitly."""
    python = str(VENV / "bin" / "python")
    spark_home = next((VENV / "lib").glob("python3*/site-packages/pyspark"), None)
    env = {"PYSPARK_PYTHON": python, "PYSPARK_DRIVER_PYTHON": python,
           "PATH": f"{VENV / 'bin'}:{os.environ.get('PATH', '')}"}
    if spark_home:
        env["SPARK_HOME"] = str(spark_home)
    return env


def _retries() -> dict:
    retries = int(os.environ.get("S1MMALIGN_DAG_RETRIES", DEFAULTS["retries"]))
    return {"retries": retries, "retry_delay": timedelta(seconds=DEFAULTS["retry_delay_seconds"]),
            "retry_exponential_backoff": True,
            "max_retry_delay": timedelta(seconds=DEFAULTS["max_retry_delay_seconds"])}


PARAMS = {
    "source": Param(DEFAULTS["source"], type="string", description="source root: a folder or s3://"),
    "lake": Param(DEFAULTS["lake"], type="string", description="lake root: a folder or s3://"),
    "conf": Param(DEFAULTS["conf"], type="string", description="the jobs' --conf file"),
    "checkpoint": Param(DEFAULTS["checkpoint"], type=["null", "string"], description="CLIP weights; null: no scoring"),
    "model": Param(DEFAULTS["model"], type="string", description="the open_clip model of the checkpoint"),
    "fluency_checkpoint": Param(DEFAULTS["fluency_checkpoint"], type=["null", "string"],
                                description="masked-LM folder (Hugging Face layout); null: no fluency scores"),
    "report_out": Param(DEFAULTS["report_out"], type="string", description="the report's folder or s3://"),
}


def job(task_id: str, *args: str, script: str | None = None, **kwargs) -> SparkSubmitOperator:
    """The project's jobs/<script or task_id>.py through spark-submit, as the README's cluster lines run it."""
    script = script or task_id
    jars = ",".join(str(p) for p in sorted((HOME / "jars").glob("*.jar")))
    return SparkSubmitOperator(
        task_id=task_id, application=str(HOME / "jobs" / f"{script}.py"), conn_id=DEFAULTS["connection"],
        py_files=str(HOME / "dist" / "s1mmalign.zip"), jars=jars or None, name=f"s1mmalign-{script}",
        spark_binary=str(VENV / "bin" / "spark-submit"), env_vars=_env(),
        application_args=["--lake", "{{ params.lake | s1_path }}", "--conf", "{{ params.conf | s1_path }}", *args],
        outlets=[asset(t) for t in TABLES_OF.get(script, [])], **kwargs)


def plan(params: dict) -> bool:
    """jobs/plan.py in the project's venv: True when some source file is new or changed."""
    cmd = [str(VENV / "bin" / "python"), str(HOME / "jobs" / "plan.py"), "--source", _path(params["source"]),
           "--lake", _path(params["lake"]), "--conf", _path(params["conf"])]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **_env()}, cwd=HOME)
    print(proc.stdout + proc.stderr)
    if proc.returncode == NOTHING_TO_DO:
        return False
    if proc.returncode != 0:
        raise AirflowException(f"plan failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
    return True


def checkpoint_configured(params: dict) -> bool:
    return bool(params.get("checkpoint"))


def fluency_configured(params: dict) -> bool:
    return bool(params.get("fluency_checkpoint"))


with DAG(
    dag_id="s1mmalign_refresh",
    description="S1-MMAlign lake: incremental ingest, validation, CLIP scores, caption-quality report",
    schedule=DEFAULTS["schedule"],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=_retries(),
    params=PARAMS,
    user_defined_filters={"s1_path": _path},
    tags=["s1mmalign"],
) as refresh:
    planned = ShortCircuitOperator(task_id="plan", python_callable=plan)
    ingest = job("ingest", "--source", "{{ params.source | s1_path }}")
    signals = job("score_text")
    validate = job("validate")
    scoring = ShortCircuitOperator(task_id="checkpoint_configured", python_callable=checkpoint_configured,
                                   ignore_downstream_trigger_rules=False)
    score = job("score_clip", "--checkpoint", "{{ params.checkpoint | s1_path }}", "--model", "{{ params.model }}",
                pool=DEFAULTS["gpu_pool"])
    fluent = ShortCircuitOperator(task_id="fluency_configured", python_callable=fluency_configured,
                                  ignore_downstream_trigger_rules=False, trigger_rule="none_failed")
    fluency = job("score_fluency", "--checkpoint", "{{ params.fluency_checkpoint | s1_path }}",
                  pool=DEFAULTS["gpu_pool"])
    report = job("report", "--out", "{{ params.report_out | s1_path }}", trigger_rule="none_failed")
    planned >> ingest >> signals >> validate >> scoring >> score >> fluent >> fluency >> report
    validate >> fluent
    validate >> report


with DAG(
    dag_id="s1mmalign_maintain",
    description="S1-MMAlign lake: OPTIMIZE (Z-ORDER by arxiv_id), VACUUM, leftover staging",
    schedule=DEFAULTS["maintain_schedule"],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=_retries(),
    params={k: PARAMS[k] for k in ("lake", "conf")},
    user_defined_filters={"s1_path": _path},
    tags=["s1mmalign"],
) as maintenance:
    job("maintain") >> job("validate_full", "--full", script="validate")
