"""Whole jobs as users run them: spark-submit on the sample and on scifig300 (a standalone cluster:
test_s3_lake.py), a source on S3 (moto's server), the spark-sql catalog, kill -9 and re-run, and clear errors."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile

import pytest

from helpers import (
    REPO,
    TINY,
    assert_image_bytes,
    assert_invariant,
    held,
    kill_9_after,
    manifest,
    manifest_counts,
    ok,
    run_job,
    signal_after,
    snapshot,
    table_rows,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def submitted_lake(tmp_path_factory, faults_corpus):
    """One clean spark-submit run over the faults corpus: what every other run must equal."""
    lake = tmp_path_factory.mktemp("clean") / "lake"
    ok(run_job("ingest", "--source", str(faults_corpus), "--lake", str(lake)))
    return lake


def test_spark_submit_on_faults_corpus(spark, submitted_lake, faults_corpus):
    pairs, _ = assert_invariant(spark, submitted_lake, manifest(faults_corpus))
    assert_image_bytes(spark, submitted_lake, pairs)


def test_scifig300_real_figures(spark, cfg, scifig300, tmp_path):
    from s1mmalign.ingest import pipeline as ingest
    from s1mmalign.lake import lease

    lake = tmp_path / "lake"
    ingest.run(spark, cfg, str(scifig300), held(str(lake), cfg))     # (ingest's spark-submit: submitted_lake)
    lease.release_all()                                               # as the job does at its exit
    records = [line for line in (scifig300 / "arxiv/jsonl/24_recaption.jsonl").read_bytes().splitlines()
               if line.strip()]
    with tarfile.open(scifig300 / "arxiv/images_2024.tar.gz") as tar:
        truth = {m.name: hashlib.sha256(tar.extractfile(m).read()).hexdigest() for m in tar if m.isreg()}
    import json
    expected = {}
    for n, line in enumerate(records, start=1):
        rec = json.loads(line)
        expected[("arxiv/jsonl/24_recaption.jsonl", n)] = {
            "expect": "pair", "pair_id": hashlib.sha256(f"arxiv\x00{rec['image_path']}".encode()).hexdigest()[:32],
            "discipline": "computer_science", "arxiv_id": rec["metadata"]["arxiv_id"],
            "image_sha256": truth[rec["image_path"]], "image_format": "PNG"}
    pairs, quarantine = assert_invariant(spark, lake, expected)
    assert len(pairs) == 300 and quarantine == []
    assert_image_bytes(spark, lake, pairs)
    dims = table_rows(spark, lake, "pairs", "width", "height", "image_bytes")
    assert all(287 <= r.width <= 1275 and r.height > 0 and r.image_bytes > 6000 for r in dims)
    # 300 real figures pass every expectation, warnings included, and hold no duplicates (validate in-process:
    # its spark-submit, exit codes and closing line are test_kill_9_mid_validate_then_rerun_...'s)
    from s1mmalign.validate import pipeline as validate

    outcome = validate.run(spark, cfg, held(str(lake), cfg))
    assert outcome.summary_line().startswith("all ") and not outcome.warnings, outcome.summary_line()
    assert table_rows(spark, lake, "duplicates", "pair_id") == []
    index = (lake / "_quality" / "data_docs" / "index.html").read_text()   # offline: no CDN, its own copies
    assert "Content-Security-Policy" in index and "https://" not in index.split("<body")[0]
    assert (lake / "_quality" / "data_docs" / "static" / "vendor" / "jquery@3.7.1" / "dist" / "jquery.min.js").is_file()


def _large_archive_corpus(root, total_bytes: int) -> int:
    """An arXiv source whose images, about total_bytes of JPEG noise (4 MB each, distinct bytes), sit in
    ONE archive, as the real release ships a year; returns the number of figures."""
    import gzip
    import io
    import json
    import struct

    from PIL import Image

    (root / "arxiv/jsonl").mkdir(parents=True)
    bases = []
    for _ in range(8):
        noise = Image.frombytes("RGB", (2000, 1500), os.urandom(2000 * 1500 * 3))
        out = io.BytesIO()
        noise.save(out, "JPEG", quality=95)
        bases.append(out.getvalue())
    # every discipline, interleaved: each writing task keeps a file open per discipline
    categories = ["cs.CV", "math.AP", "astro-ph.GA", "q-bio.NC", "physics.ao-ph", "physics.chem-ph",
                  "physics.med-ph", "eess.IV", "hep-th", "q-fin.ST"]
    n, written = 0, 0
    with open(root / "arxiv/images_2024.tar.gz", "wb") as raw, \
            gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=1) as gz, \
            tarfile.open(fileobj=gz, mode="w|") as tar, \
            open(root / "arxiv/jsonl/24_recaption.jsonl", "w") as jsonl:
        while written < total_bytes:
            comment = f"s1mmalign test figure {n}".encode()   # a JPEG COM segment: distinct bytes, same pixels
            blob = bases[n % 8][:2] + b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + bases[n % 8][2:]
            arxiv_id = f"2401.{n:05d}"
            info = tarfile.TarInfo(f"images/2401/{arxiv_id}.tar.gz/fig1.jpg")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
            jsonl.write(json.dumps({"image_path": info.name, "caption": f"Figure 1: noise {n}.",
                                    "recaption": f"A field of random color noise, number {n}.",
                                    "metadata": {"arxiv_id": arxiv_id, "title": "Noise",
                                                 "categories": categories[n % len(categories)]}}) + "\n")
            n += 1
            written += len(blob)
    return n


def test_one_archive_larger_than_the_driver_heap(spark, tmp_path):
    """About 1 GB of figures in one archive, ingested through spark-submit with a 512 MB driver (local
    mode: the tasks run in the driver's heap): every figure becomes a pair, the archive's members spread
    over tasks, and the images table's row groups stay capped in bytes."""
    import json

    import pyarrow.parquet as pq

    source, lake = tmp_path / "source", tmp_path / "lake"
    n = _large_archive_corpus(source, 1 << 30)
    assert (source / "arxiv/images_2024.tar.gz").stat().st_size > 1_000_000_000     # twice the heap
    proc = run_job("ingest", "--source", str(source), "--lake", str(lake),
                   submit_args=("--driver-memory", "512m"), timeout=900)
    ok(proc)
    done = [line for line in (proc.stdout + proc.stderr).splitlines() if "ingest run " in line and " done in " in line]
    summary = json.loads(done[-1].split(": ", 2)[-1])
    assert (summary["pairs"], summary["quarantined"]) == (n, 0)
    assert summary["archive_tasks"]["arxiv/images_2024.tar.gz"] >= 2
    images = spark.read.format("delta").load(str(lake / "images"))
    assert images.count() == n
    assert images.where("sha2(content, 256) <> image_sha256").count() == 0
    pairs = spark.read.format("delta").load(str(lake / "pairs"))
    assert pairs.count() == n and pairs.select("discipline").distinct().count() == 10
    groups = [pq.ParquetFile(f).metadata.row_group(i).total_byte_size
              for f in (lake / "images").rglob("*.parquet") for i in range(pq.ParquetFile(f).num_row_groups)]
    assert groups and max(groups) < 48 << 20, max(groups)


def test_stopped_and_killed_mid_ingest_then_rerun_equals_one_clean_run(spark, submitted_lake, faults_corpus, tmp_path):
    lake = tmp_path / "lake"
    args = ["--source", str(faults_corpus), "--lake", str(lake)]
    # A scheduler's SIGTERM mid-run (Airflow stopping a task): one line of the job's own, exit 143, no traceback
    # (the JVM, which gets the signal too, may log a task it could no longer start as it shuts down). Ctrl-C's
    # SIGINT goes through the same handler: its line and exit 130 are test_cli's, without a JVM.
    said = signal_after("ingest", args, "stage jsonl", signal.SIGTERM)
    assert "Traceback" not in said and "Py4J" not in said, said[-3000:]
    assert [ln for ln in said.splitlines() if ln.startswith("ingest:")] == [
        "ingest: stopped by SIGTERM: nothing after its last complete commit is kept; run it again to finish "
        "(a re-run converges to one clean run's tables)"], said[-3000:]
    # Killed between commits: pairs is in (the other three commit beside it), ingest_log is not. (Killed
    # before any commit, while staging archives: test_s3_lake's kill -9, with the lease it leaves.)
    kill_9_after("ingest", args, "write pairs:")
    assert snapshot(spark, lake, "pairs") and not snapshot(spark, lake, "ingest_log")
    ok(run_job("ingest", *args))
    for table in ("pairs", "images", "quarantine", "image_index", "ingest_log"):
        assert snapshot(spark, lake, table) == snapshot(spark, submitted_lake, table), table


def test_source_on_s3(spark, faults_corpus, tmp_path, moto):
    import boto3

    endpoint = moto
    creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
             "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    s3.create_bucket(Bucket="corpus")
    for path in faults_corpus.rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), "corpus", f"s1/{path.relative_to(faults_corpus).as_posix()}")
    lake = tmp_path / "lake"
    ok(run_job("ingest", "--source", "s3://corpus/s1", "--lake", str(lake), env=creds))
    # S3 has no folders: the record naming a tree folder (image_unreadable on disk) names no object
    expected = {k: {**e, "expect": "image_missing" if e["expect"] == "image_unreadable" else e["expect"]}
                for k, e in manifest(faults_corpus).items()}
    assert any(e["expect"] == "image_unreadable" for e in manifest(faults_corpus).values())
    pairs, _ = assert_invariant(spark, lake, expected)
    assert_image_bytes(spark, lake, pairs)
    etags = [r.etag for r in table_rows(spark, lake, "ingest_log", "etag")]
    assert etags and all(etags)
    # Unchanged objects: the refresh reads nothing.
    again = run_job("ingest", "--source", "s3://corpus/s1", "--lake", str(lake), env=creds, submit=False)
    ok(again)
    assert "nothing changed since the last run" in again.stderr
    # No such bucket: one clear line, non-zero.
    bad = run_job("ingest", "--source", "s3://no-such-bucket/x", "--lake", str(tmp_path / "l2"),
                  env=creds, submit=False)
    assert bad.returncode != 0 and "no-such-bucket" in bad.stderr.strip().splitlines()[-1]


def _relaxed_conf(tmp_path) -> str:
    """The faults corpus quarantines about a quarter of its lines by design: let that share pass."""
    conf = tmp_path / "relaxed.yaml"
    conf.write_text("quality:\n  thresholds:\n    quarantined_share_max: 0.5\n")
    return str(conf)


def verdict(proc: subprocess.CompletedProcess) -> str:
    """validate's one closing line (spark-submit passes the Python driver's stderr through its stdout)."""
    lines = [x for x in (proc.stdout + proc.stderr).splitlines() if x.startswith("validate: ")]
    assert len(lines) == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    return lines[0]


def test_kill_9_mid_validate_then_rerun_exit_codes_one_line_and_catalog(spark, submitted_lake, faults_corpus,
                                                                       tmp_path):
    manifest_lines = manifest(faults_corpus)
    lake = tmp_path / "lake"
    shutil.copytree(submitted_lake, lake)
    # (exit 0 is checked on scifig300 above; with the default 10% the faults corpus fails
    # quarantined_share: tested in-process, and shown by ./build.sh sample)
    from delta.tables import DeltaTable
    pid = table_rows(spark, lake, "pairs", "pair_id")[0].pair_id
    DeltaTable.forPath(spark, str(lake / "pairs")).update(f"pair_id = '{pid}'", {"image_path": "'../../etc/passwd'"})
    kill_9_after("validate", ["--lake", str(lake)], "stage frames")     # duplicates written, results not yet
    assert table_rows(spark, lake, "quality_results", "suite") == []
    planted = run_job("validate", "--lake", str(lake), "--conf", _relaxed_conf(tmp_path),
                      "--out", str(tmp_path / "docs"), "--full")
    assert planted.returncode == 1
    said = planted.stdout + planted.stderr
    assert "near duplicates: every hash banded anew (--full)" in said, said[-3000:]
    assert ("1 critical expectation(s) failed: path_integrity.pairs:image_path_no_dotdot (1 unexpected of"
            in verdict(planted))
    assert "Traceback" not in planted.stderr
    assert (tmp_path / "docs" / "index.html").is_file()
    runs = {r.validate_run_id for r in table_rows(spark, lake, "quality_results", "validate_run_id")}
    assert len(runs) == 1
    assert {r.validate_run_id for r in table_rows(spark, lake, "duplicates", "validate_run_id")} <= runs
    results = table_rows(spark, lake, "quality_results", "validate_run_id", "success")
    assert len({r.validate_run_id for r in results}) == 1 and sum(not r.success for r in results) == 1
    assert table_rows(spark, lake, "duplicates", "pair_id") == []
    # The run history: the ingest and the validate that finished (kill -9 leaves no row: nothing runs after it)
    history = sorted(table_rows(spark, lake, "job_runs", "job", "run_id", "status", "exit_code", "counts",
                                "versions_written", "bytes_written", "settings_digest"), key=lambda r: r.job)
    assert [(r.job, r.status, r.exit_code) for r in history] == [("ingest", "ok", 0), ("validate", "failed", 1)]
    ingested, validated = history
    assert json.loads(ingested.counts)["lines"] == len(manifest_lines) and json.loads(ingested.counts)["pairs"] > 0
    assert json.loads(ingested.bytes_written)["pairs"] > 0 and "pairs" in json.loads(ingested.versions_written)
    assert validated.run_id in runs and json.loads(validated.counts)["critical_failures_n"] == 1
    assert "quality_results" in json.loads(validated.versions_written)
    assert len(ingested.settings_digest) == 16 and ingested.settings_digest != validated.settings_digest
    # weekly maintenance through spark-submit (the maintain DAG's first task): the same rows afterwards
    rows = sorted(tuple(r) for r in table_rows(spark, lake, "pairs", "pair_id", "caption", "image_path"))
    kept = run_job("maintain", "--lake", str(lake))
    ok(kept)
    assert "maintain: pairs:" in kept.stdout + kept.stderr, (kept.stdout + kept.stderr)[-3000:]
    assert sorted(tuple(r) for r in table_rows(spark, lake, "pairs", "pair_id", "caption", "image_path")) == rows


def test_score_clip_through_spark_submit(spark, submitted_lake, tmp_path, tiny_checkpoint):
    lake = tmp_path / "lake"
    shutil.copytree(submitted_lake, lake)
    args = ["--lake", str(lake), "--model", "tiny-clip", "--model-config", TINY, "--checkpoint", str(tiny_checkpoint)]
    first = run_job("score_clip", *args)
    ok(first)
    pairs = len(table_rows(spark, lake, "pairs", "pair_id"))
    assert f"score_clip: {pairs} pairs scored by tiny-clip@sha256:" in first.stdout
    scores = table_rows(spark, lake, "clip_scores", "pair_id", "score_caption", "score_recaption", "status")
    assert len(scores) == pairs and all(-1 <= r.score_caption <= 1 and r.status == "ok" for r in scores)
    # (a second run scoring nothing new: test_score, in-process)
    refused = run_job("score_clip", "--lake", str(lake), submit=False)
    assert refused.returncode == 2 and "no checkpoint" in refused.stderr.strip().splitlines()[-1]
    assert "Traceback" not in refused.stderr


def test_score_text_and_fluency_through_spark_submit(spark, submitted_lake, tmp_path, tiny_mlm):
    lake = tmp_path / "lake"
    shutil.copytree(submitted_lake, lake)
    pairs = len(table_rows(spark, lake, "pairs", "pair_id"))
    text = run_job("score_text", "--lake", str(lake))
    ok(text)
    assert f"score_text: {pairs} pairs computed, {pairs} pairs with signals" in text.stdout
    signals = table_rows(spark, lake, "text_signals", "pair_id", "caption_words", "recaption_lang")
    assert len(signals) == pairs and all(r.caption_words >= 0 for r in signals)
    fluent = run_job("score_fluency", "--lake", str(lake), "--checkpoint", str(tiny_mlm), "--model", "tiny-bert",
                     "--per-stratum", "4")
    ok(fluent)
    scored = table_rows(spark, lake, "fluency_scores", "pair_id", "discipline", "ppl_caption", "status", "sample")
    from s1mmalign.lake import schemas

    strata = (spark.read.format("delta").load(str(lake / "pairs"))
              .selectExpr("discipline", f"{schemas.FIGURE_TYPE_SQL} AS figure_type")
              .groupBy("discipline", "figure_type").count().collect())
    assert len(scored) == sum(min(4, r["count"]) for r in strata) and len(strata) > 3
    assert f"score_fluency: {len(scored)} pairs scored by tiny-bert@sha256:" in fluent.stdout
    assert {r.sample for r in scored} == {"stratified"} and all(r.ppl_caption is None or r.ppl_caption >= 1
                                                                 for r in scored)
    # a wrong checkpoint, or flags that exclude each other: one line, exit 2, before Spark starts
    for args, said in ((["--checkpoint", str(tmp_path / "nowhere")], "is not a folder"),
                       (["--checkpoint", str(tiny_mlm), "--all", "--per-stratum", "3"], "not allowed with")):
        refused = run_job("score_fluency", "--lake", str(lake), *args, submit=False)
        assert refused.returncode == 2 and said in refused.stderr.strip().splitlines()[-1], refused.stderr
        assert "Traceback" not in refused.stderr


def test_report_through_spark_submit_and_its_views_in_a_new_spark_sql_session(spark, submitted_lake, faults_corpus,
                                                                            tmp_path):
    lake, out = tmp_path / "lake", tmp_path / "report"
    shutil.copytree(submitted_lake, lake)
    proc = run_job("report", "--lake", str(lake), "--out", str(out))
    ok(proc)
    import json
    summary = json.loads((out / "summary.json").read_text())
    pairs = len(table_rows(spark, lake, "pairs", "pair_id"))
    assert summary["views"]["overview"][0]["pairs"] == pairs
    said = f"report: {out / 'report.html'} ({pairs} pairs, 0 CLIP model(s), 3 plots; 9 views in the catalog)"
    assert said in proc.stdout
    assert set(summary["unavailable"]) == {"clip_stats", "clip_histogram", "clip_lowest", "duplicate_rates",
                                           "quality_latest", "quality_trend", "pair_signals", "text_signal_rates",
                                           "text_signal_worst", "clip_card", "fluency_card", "caption_card"}
    assert sorted(summary["plots"]) == ["lengths.png", "pairs.png", "quarantine.png"]
    assert all((out / name).stat().st_size > 1000 for name in summary["plots"])
    assert "No CLIP scores in this lake" in (out / "report.html").read_text()
    overall = {r["field"]: r for r in summary["views"]["caption_lengths"] if r["discipline"] == r["source"] == "*"}
    proc = subprocess.run([sys.executable, "-m", "s1mmalign.report.sqlshell", "--lake", str(lake), "-S", "-e",
                           "SELECT pairs FROM s1mmalign.overview; SELECT count(*) FROM s1mmalign.quarantine;"
                           "SELECT field, present, words_p50 FROM s1mmalign.caption_lengths "
                           "WHERE discipline = '*' AND source = '*' ORDER BY field"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    ok(proc)
    in_pairs, quarantined = manifest_counts(faults_corpus)
    assert pairs == in_pairs
    assert proc.stdout.split() == [str(pairs), str(quarantined)] + [
        str(x) for f in ("caption", "recaption") for x in (f, overall[f]["present"], overall[f]["words_p50"])]
