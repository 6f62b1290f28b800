"""The Airflow DAGs (dags/s1mmalign_refresh.py) in real Airflow 3.3.2, from its own venv (.venv-airflow,
made by build.sh), with a SQLite metadata database and no server: the DagBag's view of the graph, then
`airflow dags test` runs with real spark-submit tasks: a refresh, a refresh with nothing new (skipped,
no table changes); then the validate task on a lake that fails a critical expectation (the task fails)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from helpers import REPO, lake_at
from s1mmalign.ingest import sample

AIRFLOW_BIN = REPO / ".venv-airflow" / "bin"
STRUCTURE = r"""
import json
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=__import__("os").environ["AIRFLOW__CORE__DAGS_FOLDER"])
out = {"errors": {k: str(v) for k, v in bag.import_errors.items()}, "dags": {}}
for dag in bag.dags.values():
    tasks = {}
    for t in dag.tasks:
        tasks[t.task_id] = {
            "type": type(t).__name__, "upstream": sorted(t.upstream_task_ids), "retries": t.retries,
            "backoff": t.retry_exponential_backoff, "pool": t.pool,
            "trigger_rule": str(getattr(t.trigger_rule, "value", t.trigger_rule)),
            "outlets": sorted(a.name for a in t.outlets),
            "spark_binary": getattr(t, "_spark_binary", None) or getattr(t, "spark_binary", None),
            "py_files": getattr(t, "py_files", None),
            "application": getattr(t, "application", None) or getattr(t, "_application", None),
            "args": getattr(t, "application_args", None) or getattr(t, "_application_args", None)}
    out["dags"][dag.dag_id] = {"schedule": str(dag.schedule), "catchup": dag.catchup,
                               "max_active_runs": dag.max_active_runs, "params": sorted(dag.params),
                               "tasks": tasks}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory):
    assert (AIRFLOW_BIN / "airflow").exists(), ".venv-airflow is missing: run ./build.sh airflow (./build.sh test does)"
    home = tmp_path_factory.mktemp("airflow-home")
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
           "AIRFLOW_CONN_S1MMALIGN_SPARK": json.dumps({"conn_type": "spark", "host": "local[2]"})}
    for cmd in (["db", "migrate"], ["pools", "set", "gpu", "1", "GPU workers"]):
        proc = subprocess.run([str(AIRFLOW_BIN / "airflow"), *cmd], env=env, capture_output=True, text=True,
                              timeout=300, cwd=home)
        assert proc.returncode == 0, proc.stderr[-2000:]
    return env


def test_the_dags_import_and_are_wired_as_designed(airflow_env):
    proc = subprocess.run([str(AIRFLOW_BIN / "python"), "-c", STRUCTURE], env=airflow_env, capture_output=True,
                          text=True, timeout=300, cwd=airflow_env["AIRFLOW_HOME"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["errors"] == {}
    refresh, maintain = info["dags"]["s1mmalign_refresh"], info["dags"]["s1mmalign_maintain"]
    assert (refresh["schedule"], refresh["catchup"], refresh["max_active_runs"]) == ("@daily", False, 1)
    assert (maintain["schedule"], maintain["catchup"], maintain["max_active_runs"]) == ("@weekly", False, 1)
    assert refresh["params"] == ["checkpoint", "conf", "fluency_checkpoint", "lake", "model", "report_out", "source"]
    t = refresh["tasks"]
    assert {k: v["upstream"] for k, v in t.items()} == {
        "plan": [], "ingest": ["plan"], "score_text": ["ingest"], "validate": ["score_text"],
        "checkpoint_configured": ["validate"], "score_clip": ["checkpoint_configured"],
        "fluency_configured": ["score_clip", "validate"], "score_fluency": ["fluency_configured"],
        "report": ["score_fluency", "validate"]}
    assert t["fluency_configured"]["trigger_rule"] == "none_failed"
    jobs = {**t, **maintain["tasks"]}
    full = maintain["tasks"]["validate_full"]
    assert full["upstream"] == ["maintain"] and full["outlets"] == t["validate"]["outlets"]
    assert full["application"] == t["validate"]["application"] == str(REPO / "jobs" / "validate.py")
    assert full["args"] == [*t["validate"]["args"], "--full"] and "--full" not in t["validate"]["args"]
    assert maintain["tasks"]["maintain"]["application"] == str(REPO / "jobs" / "maintain.py")
    for name in ("ingest", "score_text", "validate", "score_clip", "score_fluency", "report", "maintain",
                 "validate_full"):
        assert jobs[name]["type"] == "SparkSubmitOperator", name
        assert jobs[name]["spark_binary"] == str(REPO / ".venv" / "bin" / "spark-submit")
        assert jobs[name]["py_files"] == str(REPO / "dist" / "s1mmalign.zip")
    assert all(v["retries"] == 3 and v["backoff"] for v in jobs.values())
    assert t["score_clip"]["pool"] == t["score_fluency"]["pool"] == "gpu"
    assert t["report"]["trigger_rule"] == "none_failed"
    assert t["ingest"]["outlets"] == ["s1mmalign.image_index", "s1mmalign.images", "s1mmalign.ingest_log",
                                      "s1mmalign.pairs", "s1mmalign.quarantine"]
    assert t["validate"]["outlets"] == ["s1mmalign.duplicates", "s1mmalign.quality_results"]
    assert t["score_clip"]["outlets"] == ["s1mmalign.clip_scores"] and t["report"]["outlets"] == []
    assert t["score_text"]["outlets"] == ["s1mmalign.text_signals"]
    assert t["score_fluency"]["outlets"] == ["s1mmalign.fluency_scores"]
    assert "s1mmalign.pairs" in jobs["maintain"]["outlets"]


def dags_test(env: dict, dag: str, conf: dict) -> tuple[str, str]:
    """`airflow dags test` (tasks retried none: a failure shows at once); its output and the run's state."""
    proc = subprocess.run([str(AIRFLOW_BIN / "airflow"), "dags", "test", dag, "--conf", json.dumps(conf)],
                          env={**env, "S1MMALIGN_DAG_RETRIES": "0"}, capture_output=True, text=True, timeout=1200,
                          cwd=env["AIRFLOW_HOME"])
    out = proc.stdout + proc.stderr
    states = [ln.split("state=", 1)[1].split(",", 1)[0] for ln in out.splitlines() if "DagRun Finished" in ln]
    assert states, out[-3000:]
    return out, states[-1]


def versions(lake) -> dict[str, int]:
    return {t: lake_at(str(lake)).version(t) for t in ("pairs", "images", "quarantine", "ingest_log")}


@pytest.mark.e2e
def test_refresh_then_nothing_new_then_a_failed_validation_task(spark, airflow_env, tmp_path):
    src, lake = tmp_path / "src", tmp_path / "lake"
    sample.generate(src, n_pairs=120, seed=4, faults=False, processes=2)
    conf = {"source": str(src), "lake": str(lake), "report_out": str(tmp_path / "report1")}

    out, state = dags_test(airflow_env, "s1mmalign_refresh", conf)
    assert state == "success", out[-3000:]
    assert lake_at(str(lake)).read(spark, "pairs").count() == 120
    assert (tmp_path / "report1" / "report.html").is_file()
    # Data Docs built (the job runs from dist/s1mmalign.zip: its assets are found in the checkout it was built from)
    assert (lake / "_quality" / "data_docs" / "index.html").is_file(), out[-3000:]
    assert not lake_at(str(lake)).exists("clip_scores")             # no checkpoint: not scored
    assert not lake_at(str(lake)).exists("fluency_scores")          # nor fluency
    assert lake_at(str(lake)).read(spark, "text_signals").count() == 120   # text signals need no model
    first = versions(lake)

    # Nothing new: plan short-circuits the rest; no table changes, no report.
    out, state = dags_test(airflow_env, "s1mmalign_refresh", {**conf, "report_out": str(tmp_path / "report2")})
    assert state == "success" and "plan: 0 file(s) to ingest" in out, out[-3000:]
    assert versions(lake) == first and not (tmp_path / "report2").exists()

    # A critical expectation failing: the validate task fails, its log naming the expectation (what follows
    # from that, nothing downstream and the run failed, is the trigger rules checked above). `tasks test` of
    # that one task on a lake with a planted `..` path: a whole failing refresh cost three more spark-submits.
    from delta.tables import DeltaTable

    pid = lake_at(str(lake)).read(spark, "pairs").orderBy("pair_id").first().pair_id
    DeltaTable.forPath(spark, str(lake / "pairs")).update(f"pair_id = '{pid}'", {"image_path": "'../../etc/passwd'"})
    proc = subprocess.run([str(AIRFLOW_BIN / "airflow"), "tasks", "test", "s1mmalign_refresh", "validate",
                           "-t", json.dumps({"lake": str(lake)})],
                          env={**airflow_env, "S1MMALIGN_DAG_RETRIES": "0"}, capture_output=True, text=True,
                          timeout=1200, cwd=airflow_env["AIRFLOW_HOME"])
    out = proc.stdout + proc.stderr
    # (`tasks test` exits 0 whatever the task did: its state is in the log)
    assert "new_state=failed" in out and "new_state=success" not in out, out[-3000:]
    assert "1 critical expectation(s) failed: path_integrity.pairs:image_path_no_dotdot" in out, out[-3000:]
