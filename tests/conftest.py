"""Shared fixtures: one local Spark session with Delta, sample corpora generated once per test run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import BIN, REPO, TEST_SECRET  # noqa: E402

SHARED = REPO.parent / "shared"
SCIFIG300 = SHARED / "data" / "scifig300"

# S3 in tests is moto's server on 127.0.0.1, never AWS: fixed credentials, set before the shared Spark JVM
# (and its Python workers) start, as the AWS chain would give them to a job. The secret is a marker that
# tests look for in what the jobs write and log.
for _name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
    os.environ.pop(_name, None)
os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY=TEST_SECRET, AWS_DEFAULT_REGION="us-east-1")


# Rough cost of a test, for ordering files heaviest first (see below): jobs through spark-submit or a
# cluster of their own, in-process Spark, plain Python.
COST = {"e2e": 100, "cluster": 100, "spark": 10}


def pytest_collection_modifyitems(items):
    """Tiers: a test that starts a JVM (it uses the `spark` fixture, or runs jobs: e2e, cluster) is marked
    `spark`, so `./build.sh test -m "not spark"` runs the pure-Python tests alone; one that needs the CLIP
    stack is marked `clip` (`-m "not spark and not clip"`: no JVM, no torch).

    Then whole files are ordered by their tests' rough cost, heaviest first (a stable sort: the order
    within a file stays): with build.sh's two xdist workers (`--dist loadfile --no-loadscope-reorder`)
    the long spark-submit files start at once instead of last, where one worker would run them alone."""
    for item in items:
        if "spark" in getattr(item, "fixturenames", ()) or any(item.get_closest_marker(m) for m in ("e2e", "cluster")):
            item.add_marker(pytest.mark.spark)
        if ({"tiny_checkpoint", "tiny_mlm"} & set(getattr(item, "fixturenames", ()))
                or item.nodeid.startswith(("tests/test_clip.py", "tests/test_fluency.py"))):
            item.add_marker(pytest.mark.clip)
    cost: dict[str, int] = {}
    for item in items:
        mark = next((m for m in COST if item.get_closest_marker(m)), None)
        cost[item.nodeid.split("::")[0]] = cost.get(item.nodeid.split("::")[0], 0) + (COST[mark] if mark else 1)
    items.sort(key=lambda item: -cost[item.nodeid.split("::")[0]])


@pytest.fixture(autouse=True)
def _no_stray_spark_session(request):
    """A test not marked `spark` that leaves a Spark session behind (e.g. Great Expectations starting one
    for itself) fails: it would belong in the spark tier, and later tests would get that bare session
    instead of the spark fixture's (no Delta, no Python workers of this venv)."""
    if request.node.get_closest_marker("spark"):
        yield
        return
    from pyspark import SparkContext

    before = SparkContext._active_spark_context is not None
    yield
    if not before and SparkContext._active_spark_context is not None:
        pytest.fail("this test started a Spark session: use the spark fixture (which marks it `spark`)")


@pytest.fixture(autouse=True)
def _forget_lakes(request):
    """After a test in the shared JVM, Delta forgets the tables it opened: its DeltaLog cache keeps every
    table's log and snapshot for an hour, and a worker's run opens thousands of tables in temporary folders
    (the heap then grows by megabytes per test until it thrashes). A later test reads its logs again."""
    yield
    if not request.node.get_closest_marker("spark"):
        return
    from pyspark import SparkContext

    sc = SparkContext._active_spark_context
    if sc is not None:
        sc._jvm.org.apache.spark.sql.delta.DeltaLog.clearCache()


@pytest.fixture(autouse=True)
def _release_leases():
    """Every lease a test took in-process (helpers.held) is given back when it ends, as a job's is at exit."""
    yield
    from s1mmalign.lake import lease

    lease.release_all()


@pytest.fixture(scope="session")
def scifig300() -> Path:
    if not (SCIFIG300 / "arxiv" / "jsonl").is_dir():
        pytest.skip(f"../shared/data/scifig300 is not beside this checkout (looked in {SCIFIG300})")
    return SCIFIG300


@pytest.fixture(scope="session")
def cfg():
    from s1mmalign import config

    # The one in-process JVM of a worker lives for the whole run (hundreds of jobs, not one): its status
    # store keeps only the last few queries, jobs and stages (Spark keeps 1,000 each, with their plans, by
    # default; in a 1 GB driver heap that alone ran the run into GC thrashing and a failed broadcast).
    return config.load(str(REPO / "conf" / "local.yaml"),
                       overrides={"spark": {"master": "local[2]", "shuffle_partitions": 2,
                                            "extra": {"spark.ui.enabled": "false",
                                                      "spark.driver.memory": "2g",
                                                      "spark.sql.ui.retainedExecutions": "20",
                                                      "spark.ui.retainedJobs": "50",
                                                      "spark.ui.retainedStages": "50",
                                                      "spark.ui.retainedTasks": "2000"}}})


@pytest.fixture(scope="session")
def spark(tmp_path_factory, cfg):
    from helpers import lake_at
    from s1mmalign.lake import session

    spark = session.build(lake_at(tmp_path_factory.mktemp("test-catalog"), cfg), cfg, write=False)
    yield spark
    spark.stop()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny-clip model (helpers.TINY) with random weights (seed 3), saved as safetensors (skips where the
    CLIP stack is not installed: `-m "not clip"` leaves those tests out)."""
    open_clip = pytest.importorskip("open_clip", reason="the CLIP stack is not installed (pip install -e '.[clip]')")
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    from helpers import TINY

    open_clip.add_model_config(TINY)
    torch.manual_seed(3)
    model = open_clip.create_model("tiny-clip", pretrained=None)
    path = tmp_path_factory.mktemp("ckpt") / "tiny-clip.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="session")
def tiny_mlm(tmp_path_factory) -> Path:
    """A tiny BERT masked-LM (2 layers, 32 wide, 64 positions, random weights, seed 5) with a written
    WordPiece vocabulary, in SciBERT's own layout (config.json, vocab.txt; weights as model.safetensors),
    small. Skips without torch and transformers."""
    torch = pytest.importorskip("torch", reason="the CLIP stack is not installed (pip install -e '.[clip]')")
    transformers = pytest.importorskip("transformers", reason="no transformers (pip install -e '.[clip]')")
    from helpers import tiny_vocab

    folder = tmp_path_factory.mktemp("mlm") / "tiny-bert"
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(tiny_vocab()) + "\n", encoding="utf-8")
    torch.manual_seed(5)
    conf = transformers.BertConfig(vocab_size=len(tiny_vocab()), hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    transformers.BertForMaskedLM(conf).eval().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def moto() -> str:
    """moto's S3 server on 127.0.0.1 (its endpoint URL); the credentials are the ones set above."""
    from helpers import free_port, wait_port

    port = free_port()
    server = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="session")
def faults_corpus(tmp_path_factory) -> Path:
    """A 300-pair corpus with every kind of bad input (and its _manifest.jsonl)."""
    from s1mmalign.ingest import sample

    root = tmp_path_factory.mktemp("faults") / "corpus"
    sample.generate(root, n_pairs=300, seed=11, faults=True, processes=2)
    return root


@pytest.fixture(scope="session")
def clean_corpus(tmp_path_factory) -> Path:
    """A 120-pair corpus without faults (seed 23)."""
    from s1mmalign.ingest import sample

    root = tmp_path_factory.mktemp("clean") / "corpus"
    sample.generate(root, n_pairs=120, seed=23, faults=False, processes=2)
    return root


@pytest.fixture(scope="session")
def clean_lake(spark, cfg, clean_corpus, tmp_path_factory) -> Path:
    """clean_corpus ingested, once per test process, the one ingested sample the in-process tests share:
    read it as it is; to write, take a copy (helpers.copy_lake)."""
    from helpers import held
    from s1mmalign.ingest import pipeline as ingest
    from s1mmalign.lake import lease

    lake = tmp_path_factory.mktemp("clean-lake") / "lake"
    summary = ingest.run(spark, cfg, str(clean_corpus), held(lake, cfg))
    lease.release_all()                 # read-only from here: no lease file left to copy with it
    assert summary.quarantined == 0 and summary.pairs > 100
    return lake


@pytest.fixture()
def corpus_copy(tmp_path, faults_corpus) -> Path:
    """A private copy of the faults corpus that a test may change."""
    dest = tmp_path / "corpus"
    shutil.copytree(faults_corpus, dest, copy_function=shutil.copy2)
    return dest
