"""The whole lake on S3 (moto's server on 127.0.0.1): ingest, validate, score_clip and report with source,
lake, checkpoint and outputs on S3, read back with an independent reader (delta-rs) and equal, row for
row, to the same run on local disk; S3 faults (503 SlowDown, connection resets) through a proxy."""

from __future__ import annotations

import http.client
import http.server
import os
import random
import socket
import socketserver
import subprocess
import threading

import pytest

from helpers import BIN, TEST_SECRET, TINY, free_port, held, kill_9_after, lake_at, ok, s3_cfg, wait_port
from s1mmalign.config import S3Conf
from s1mmalign.ingest import pipeline as ingest
from s1mmalign.lake import session
from s1mmalign.lake.storage import S3Store, Store
from s1mmalign.report import analytics
from s1mmalign.report import page as report
from s1mmalign.score import clip
from s1mmalign.score import pipeline as score
from s1mmalign.validate import pipeline as validate

# Columns that differ between two equivalent runs: run ids, clock times, and what S3 and a disk
# fingerprint differently (an ETag against a modification time).
VOLATILE = {"ingest_run_id", "ingested_at", "validate_run_id", "computed_at", "validated_at", "scored_at",
            "modified_at", "etag", "fingerprint"}
TABLES = ("pairs", "images", "quarantine", "ingest_log", "image_index", "duplicates", "quality_results",
          "clip_scores")



def bucket(endpoint: str, name: str) -> S3Store:
    store = S3Store(name, "", S3Conf(endpoint_url=endpoint))
    store.client.create_bucket(Bucket=name)
    return store


def delta_rs_rows(uri: str, name: str, endpoint: str | None) -> list[tuple]:
    """A table's rows read by delta-rs (not Spark), without the volatile columns, sorted."""
    import pyarrow as pa
    from deltalake import DeltaTable, QueryBuilder

    options = None
    if endpoint:
        options = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": os.environ["AWS_ACCESS_KEY_ID"],
                   "AWS_SECRET_ACCESS_KEY": os.environ["AWS_SECRET_ACCESS_KEY"], "AWS_REGION": "us-east-1",
                   "AWS_ALLOW_HTTP": "true"}
        uri = uri.replace("s3a://", "s3://")
    delta = DeltaTable(f"{uri}/{name}", storage_options=options)
    if "deletionVectors" in (delta.protocol().reader_features or ()):  # pairs: rows a refresh replaced are hidden
        table = pa.table(QueryBuilder().register("t", delta).execute("SELECT * FROM t").read_all())
    else:
        table = delta.to_pyarrow_table()
    cols = [c for c in table.column_names if c not in VOLATILE]
    return sorted((tuple(r[c] for c in cols) for r in table.select(cols).to_pylist()), key=repr)


def run_all(spark, cfg, source: str, lake: str, checkpoint: str, out: str) -> dict:
    """ingest, validate, score_clip and report, in-process, as the jobs run them."""
    summary = ingest.run(spark, cfg, source, held(lake, cfg))
    outcome = validate.run(spark, cfg, held(lake, cfg))
    spec = clip.ScorerSpec.of(cfg, model="tiny-clip", checkpoint=checkpoint, model_config=TINY)
    scored = score.run(spark, cfg, held(lake, cfg), spec)
    written = report.write(out, analytics.collect(spark, cfg, lake_at(lake, cfg)), cfg.s3)
    return {"pairs": summary.pairs, "quarantined": summary.quarantined, "docs": outcome.docs_index,
            "scored": scored.scored, "report": written["report"]}


def test_every_job_on_s3_equals_the_same_run_on_disk(spark, cfg, moto, faults_corpus, tmp_path,
                                                     tiny_checkpoint):
    s3 = s3_cfg(cfg, moto, tmp_path)
    session.apply_s3a(spark, s3)
    store = bucket(moto, "lake1")
    store.upload_tree(str(faults_corpus), "src")
    store.upload_tree(str(tiny_checkpoint.parent), "models")
    on_s3 = run_all(spark, s3, "s3://lake1/src", "s3a://lake1/lake", f"s3://lake1/models/{tiny_checkpoint.name}",
                    "s3://lake1/report")
    on_disk = run_all(spark, s3, "s3://lake1/src", str(tmp_path / "lake"), f"s3://lake1/models/{tiny_checkpoint.name}",
                      str(tmp_path / "report"))

    assert on_s3["pairs"] == on_disk["pairs"] > 200 and on_s3["quarantined"] == on_disk["quarantined"] > 50
    assert on_s3["scored"] == on_disk["scored"] == on_s3["pairs"]
    for name in TABLES:
        assert delta_rs_rows("s3a://lake1/lake", name, moto) == delta_rs_rows(str(tmp_path / "lake"), name, None), name
    # outputs on S3, staging gone, no lease left (in-process runs take none), no secret in any object
    keys = {f.rel for f in _walk(store, "")}
    assert on_s3["report"] == "s3://lake1/report/report.html" and "report/report.html" in keys
    assert on_s3["docs"] == "s3a://lake1/lake/_quality/data_docs/index.html"
    assert "lake/_quality/data_docs/index.html" in keys and any(k.startswith("lake/_quality/gx/") for k in keys)
    assert not any(k.startswith("lake/_staging/") for k in keys)
    secret = TEST_SECRET.encode()
    for k in keys:
        if k.startswith(("lake/", "report/")):
            data = store.get(k)[0]
            assert secret not in data, k
    settings = session.session_settings(lake_at("s3a://lake1/lake", s3), s3)
    assert not any(secret.decode() in str(v) for v in settings.values())


def _walk(store: Store, rel: str):
    dirs, files = store.list_dir(rel)
    yield from files
    for d in dirs:
        yield from _walk(store, f"{rel}/{d}" if rel else d)


class _FaultyProxy(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


def fault_proxy(target: str, seed: int = 7, slow_down: float = 0.08, reset: float = 0.03, lost: float = 0.02):
    """An HTTP proxy on 127.0.0.1 in front of moto: a share of requests answered 503 SlowDown, some
    connections reset before the request reaches S3, some after (the answer is lost)."""
    rng = random.Random(seed)
    host, port = target.split("://", 1)[1].split(":")
    lock = threading.Lock()
    counts = {"requests": 0, "slow_down": 0, "reset": 0, "lost": 0, "paths": []}

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _reset(self):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            self.close_connection = True
            self.connection.close()

        def _body(self) -> bytes | None:
            if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():   # boto3's streamed uploads
                data = b""
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline().strip():      # trailers, then the blank line
                            pass
                        return data
                    data += self.rfile.read(size)
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else None

        def _any(self):
            body = self._body()
            with lock:
                counts["requests"] += 1
                counts["paths"].append(self.path)
                draw = rng.random()
            if draw < slow_down:
                with lock:
                    counts["slow_down"] += 1
                text = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
                self.send_response(503)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                if self.command != "HEAD":                   # a HEAD answer never has a body
                    self.wfile.write(text)
                return
            if draw < slow_down + reset:
                with lock:
                    counts["reset"] += 1
                return self._reset()
            hop = ("connection", "keep-alive", "transfer-encoding", "content-length", "expect")
            headers = {k: v for k, v in self.headers.items() if k.lower() not in hop}
            if body is not None:
                headers["Content-Length"] = str(len(body))
            upstream = http.client.HTTPConnection(host, port, timeout=60)   # plain http.client: no added headers
            try:
                upstream.request(self.command, self.path, body=body, headers=headers)
                resp = upstream.getresponse()
                status, resp_headers = resp.status, resp.getheaders()
                payload = resp.read()
            finally:
                upstream.close()
            if draw < slow_down + reset + lost:
                with lock:
                    counts["lost"] += 1
                return self._reset()
            self.send_response(status)
            length = str(len(payload))
            for k, v in resp_headers:
                if k.lower() == "content-length" and self.command == "HEAD":
                    length = v                           # a HEAD answer has no body, but the object's length
                elif k.lower() not in ("connection", "transfer-encoding", "content-length", "server", "date"):
                    self.send_header(k, v)
            self.send_header("Content-Length", length)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

    server = _FaultyProxy(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}", counts


@pytest.mark.parametrize("attempts", [3, 5])
def test_boto3_takes_attempts_and_path_style_from_the_s3_conf(moto, attempts):
    """The lake's boto3 client (Lake.store, as every job's) makes s3.max_attempts attempts of a throttled
    request, addressed path style when s3.path_style_access says so: the conf, not a constant of its own."""
    from botocore.exceptions import ClientError

    from s1mmalign import config
    from s1mmalign.lake.root import Lake

    proxy, endpoint, counts = fault_proxy(moto, slow_down=1.0, reset=0.0, lost=0.0)     # every request 503
    try:
        cfg = config.load(overrides={"s3": {"endpoint_url": endpoint, "max_attempts": attempts,
                                            "path_style_access": True}}, environ={})
        store = Lake.open("s3://conf-bucket/lake", cfg).store()
        with pytest.raises(ClientError, match="SlowDown"):
            store.get("_lease.json")
        assert counts["requests"] == attempts
        assert counts["paths"] and all(p.startswith("/conf-bucket/lake/_lease.json") for p in counts["paths"])
        assert store.client.meta.config.s3["addressing_style"] == "path"
        virtual = Lake.open("s3://conf-bucket/lake", config.load(environ={})).store()
        assert virtual.client.meta.config.s3["addressing_style"] == "auto"
    finally:
        proxy.shutdown()


def test_ingest_through_throttling_and_resets_gives_the_same_rows(spark, cfg, moto, faults_corpus, tmp_path):
    store = bucket(moto, "faulty")
    store.upload_tree(str(faults_corpus), "src")
    proxy, endpoint, counts = fault_proxy(moto)
    try:
        s3 = s3_cfg(cfg, endpoint, tmp_path)
        session.apply_s3a(spark, s3)
        summary = ingest.run(spark, s3, "s3://faulty/src", held("s3a://faulty/lake", s3))
    finally:
        proxy.shutdown()
        session.apply_s3a(spark, s3_cfg(cfg, moto, tmp_path))
    assert counts["slow_down"] > 10 and counts["reset"] > 3 and counts["lost"] > 3, counts
    clean = tmp_path / "clean"           # the same source, read without faults, into a lake on disk
    s3 = s3_cfg(cfg, moto, tmp_path)
    assert summary.pairs == ingest.run(spark, s3, "s3://faulty/src", held(str(clean), s3)).pairs > 200
    for name in ("pairs", "images", "quarantine", "ingest_log", "image_index"):
        assert delta_rs_rows("s3a://faulty/lake", name, moto) == delta_rs_rows(str(clean), name, None), name


# --- spark-submit against an S3 lake: one writer per lake, kill -9, a standalone cluster ----------------

def job_conf(tmp_path, endpoint: str, base: str | None = None, **sections) -> str:
    """A conf file for spark-submit runs: conf/<base> (if any) with moto's endpoint and `sections`."""
    import yaml

    from helpers import REPO

    data = yaml.safe_load((REPO / "conf" / base).read_text()) if base else {}
    data["s3"] = {"endpoint_url": endpoint, "path_style_access": True}
    data.update(sections)
    path = tmp_path / f"s3-{os.urandom(3).hex()}.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _last_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


@pytest.mark.e2e
def test_one_writer_per_s3_lake_kill_9_and_expiry_then_rerun_equals_a_clean_run(spark, cfg, moto, faults_corpus,
                                                                                 tmp_path):
    import json
    import sys
    import time

    from helpers import REPO, manifest_counts, run_job, snapshot

    store = bucket(moto, "race")
    store.upload_tree(str(faults_corpus), "src")
    conf = job_conf(tmp_path, moto, lease={"ttl_seconds": 20, "heartbeat_seconds": 4})
    args = ["--source", "s3://race/src", "--lake", "s3://race/lake", "--conf", conf]

    # Two writers started at once: exactly one runs, the other refuses in one line naming the holder.
    cmd = [str(BIN / "spark-submit"), "--master", "local[1]", str(REPO / "jobs" / "ingest.py"), *args]
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
             for _ in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 2], [o[1][-2000:] for o in outs]
    said = [ln for ln in "".join(outs[codes.index(2)]).splitlines() if ln.startswith("ingest: error:")]
    assert len(said) == 1, outs[codes.index(2)]     # (under spark-submit the driver's lines come on stdout)
    refusal = said[0]
    assert refusal.startswith("ingest: error: lake s3a://race/lake is being written by ingest.py pid "), refusal
    assert "one writer per lake" in refusal
    assert store.get("lake/_lease.json") is None                    # the winner gave it back

    # kill -9 mid-run leaves the lease; as if that driver had run on another node, a re-run refuses until
    # the lease expires unrenewed, then takes it over (said in one line) and converges to a clean run.
    fresh = ["--source", "s3://race/src", "--lake", "s3://race/lake2", "--conf", conf]
    kill_9_after("ingest", fresh, "stage archives")
    data, version = store.get("lake2/_lease.json")
    left = json.loads(data)
    store.put("lake2/_lease.json", json.dumps({**left, "host": "node-7"}).encode(), if_match=version)
    refused = run_job("ingest", *fresh, submit=False)
    assert refused.returncode == 2 and "on node-7" in _last_line(refused.stderr), refused.stderr[-2000:]
    time.sleep(max(0.0, left["expires"] - time.time()) + 1)
    again = run_job("ingest", *fresh)
    ok(again)
    assert "took over the lease of ingest.py pid" in again.stdout + again.stderr
    assert "expired" in again.stdout + again.stderr

    # the killed lake, run again, equals the winner's, which ran once without a break (and a run on S3 equals
    # one on disk: test_every_job_on_s3_equals_the_same_run_on_disk)
    session.apply_s3a(spark, s3_cfg(cfg, moto, tmp_path))
    for name in ("pairs", "images", "quarantine", "image_index", "ingest_log"):
        drop = ("ingest_run_id", "ingested_at")
        assert snapshot(spark, "s3a://race/lake2", name, drop) == snapshot(spark, "s3a://race/lake", name, drop), name
    keys = {f.rel for f in _walk(store, "lake2")}
    assert not any(k.startswith("lake2/_staging/") for k in keys) and "lake2/_lease.json" not in keys

    # The lake on S3 queried as users do (plain python: local mode); a lake with no tables, one line.
    sql = subprocess.run([sys.executable, "-m", "s1mmalign.report.sqlshell", "--lake", "s3://race/lake", "--conf", conf,
                          "-S", "-e", "SELECT count(*) FROM s1mmalign.pairs; "
                                      "SELECT count(*) FROM s1mmalign.quarantine"],
                         capture_output=True, text=True, timeout=300, cwd=REPO,
                         env={**os.environ, "PYSPARK_PYTHON": sys.executable})
    assert sql.returncode == 0, sql.stderr[-2000:]
    assert sql.stdout.split() == [str(n) for n in manifest_counts(faults_corpus)], sql.stdout[-2000:]
    for proc in (again, refused, sql):                        # no job says the secret, even at DEBUG
        assert TEST_SECRET not in proc.stdout + proc.stderr
    missing = run_job("validate", "--lake", "s3://race/nothing-here", "--conf", conf, submit=False)
    assert missing.returncode == 2 and "run jobs/ingest.py first" in _last_line(missing.stderr)


@pytest.mark.e2e
@pytest.mark.cluster
def test_standalone_cluster_with_the_lake_on_s3(spark, cfg, moto, faults_corpus, tmp_path):
    """A real standalone cluster (master + two workers started with spark-class): the executors write
    slices to S3 and the tables through S3A, with the credentials of their environment."""
    import sys

    from helpers import REPO, assert_image_bytes, assert_invariant, manifest

    bucket(moto, "clus")
    conf = job_conf(tmp_path, moto, base="cluster.yaml")
    zip_path = REPO / "dist" / "s1mmalign.zip"
    assert zip_path.is_file(), "dist/s1mmalign.zip is missing: run ./build.sh"
    port = free_port()
    master_url = f"spark://127.0.0.1:{port}"
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable,
           "SPARK_LOG_DIR": str(tmp_path / "logs"), "SPARK_WORKER_DIR": str(tmp_path / "work")}
    cls = str(BIN / "spark-class")
    procs = [subprocess.Popen([cls, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                               "--port", str(port), "--webui-port", str(free_port())],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        wait_port(port)
        for _ in range(2):
            procs.append(subprocess.Popen([cls, "org.apache.spark.deploy.worker.Worker", master_url,
                                           "--host", "127.0.0.1", "--cores", "1", "--memory", "1536m",
                                           "--webui-port", str(free_port()), "--work-dir", str(tmp_path / "work")],
                                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        lake = "s3://clus/lake"
        # as README's line for a standalone cluster, with executors sized to these two small workers
        jars = ",".join(str(p) for p in sorted((REPO / "jars").glob("*.jar")))
        proc = subprocess.run([str(BIN / "spark-submit"), "--master", master_url,
                               "--properties-file", str(REPO / "conf" / "spark" / "standalone.conf"),
                               "--py-files", str(zip_path), "--jars", jars,
                               "--conf", "spark.executor.memory=1g", "--conf", "spark.executor.memoryOverhead=384m",
                               "--conf", "spark.cores.max=2",
                               str(REPO / "jobs" / "ingest.py"), "--source", str(faults_corpus),
                               "--lake", lake, "--conf", conf],
                              capture_output=True, text=True, timeout=900, env=env, cwd=REPO)
        ok(proc)
        session.apply_s3a(spark, s3_cfg(cfg, moto, tmp_path))
        pairs, _ = assert_invariant(spark, "s3a://clus/lake", manifest(faults_corpus))
        assert_image_bytes(spark, "s3a://clus/lake", pairs)
        apps = list((tmp_path / "work").glob("app-*"))
        assert apps, "no application ran on the workers"
        assert len({p.name for a in apps for p in a.iterdir()}) == 2, "both workers' executors should run"
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
