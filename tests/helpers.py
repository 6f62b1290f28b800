"""What several test modules share (fixtures live in conftest.py): the invariant of DESIGN.md checked line
by line against a manifest, table snapshots, jobs run and killed, ports, the browser, moto's conf."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from s1mmalign.ingest import tasks

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = str(Path(__file__).parent / "data" / "tiny-clip.json")     # a tiny open_clip model config
# S3 in tests is moto's server, never AWS: conftest sets these fixed credentials; the secret is a marker that
# tests look for in what the jobs write and log.
def tiny_vocab() -> list[str]:
    """A WordPiece vocabulary for tiny_mlm: special tokens, caption words, characters and their ## pieces."""
    words = ("the a an of figure fig shows show results result model models data loss accuracy training test "
             "we our method methods on in for and with by from to is are was at as energy temperature time "
             "function distribution sample samples image images network layer error rate left right top "
             "bottom panel curve curves plot plots").split()
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,:;()[]{}$\\^_=+-*/%<>|'\"!?&#@~")
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    return list(dict.fromkeys([*special, *words, *chars, *(f"##{c}" for c in chars)]))


TEST_SECRET = "s1mmalign-test-secret-never-logged"


def lake_at(path, cfg=None, s3=None, database: str | None = None):
    """A Lake over a test's folder (or s3:// URI: then with cfg's or these S3 settings), for reads: it holds
    no lease, so a write through it fails (root.NoLease)."""
    from s1mmalign import config
    from s1mmalign.lake.root import Lake

    cfg = cfg or config.load()
    return Lake(str(path), s3 or cfg.s3, database or cfg.catalog.database, cfg.lease.ttl_seconds,
                cfg.lease.heartbeat_seconds)


def copy_lake(lake: Path, dest: Path) -> Path:
    """A private copy of a local lake's tables (not its Great Expectations project, nor a lease) to write to."""
    shutil.copytree(lake, dest, ignore=shutil.ignore_patterns("_quality", "_lease.json*"))
    return dest


def held(path, cfg=None, s3=None, database: str | None = None):
    """A Lake over a test's folder whose lease this process holds (once per lake; conftest releases every
    lease after each test), for writes in-process as a job makes them."""
    return lake_at(path, cfg, s3, database).hold("test")


def manifest(root: Path) -> dict[tuple[str, int], dict]:
    """(source_file, source_line) -> expected outcome, for every non-blank line of a sample corpus."""
    out = {}
    for line in (root / "_manifest.jsonl").read_text().splitlines():
        entry = json.loads(line)
        out[(entry["source_file"], entry["source_line"])] = entry
    return out


def manifest_counts(root: Path) -> tuple[int, int]:
    """(pairs, quarantined lines) a clean run over the sample corpus at root must give."""
    expected = manifest(root).values()
    return sum(e["expect"] == "pair" for e in expected), sum(e["expect"] != "pair" for e in expected)


def table_rows(spark, lake: str, name: str, *cols: str) -> list:
    return lake_at(str(lake)).read(spark, name).select(*cols).collect()


def assert_invariant(spark, lake, expected: dict[tuple[str, int], dict]) -> tuple[list, list]:
    """Every expected line is in exactly one of pairs/quarantine, with the expected outcome and facts."""
    pairs = table_rows(spark, lake, "pairs", "source_file", "source_line", "pair_id", "discipline", "arxiv_id",
                       "image_sha256", "image_format", "source", "image_path")
    quarantine = table_rows(spark, lake, "quarantine", "source_file", "source_line", "reason", "image_path")
    seen: dict[tuple[str, int], str] = {}
    for r in pairs:
        key = (r.source_file, r.source_line)
        assert key not in seen, f"line {key} is in pairs twice"
        seen[key] = "pair"
    for r in quarantine:
        key = (r.source_file, r.source_line)
        assert key not in seen, f"line {key} is in {seen[key]} and in quarantine ({r.reason})"
        seen[key] = r.reason
    missing = sorted(set(expected) - set(seen))
    extra = sorted(set(seen) - set(expected))
    assert not missing, f"lines in neither table: {missing[:10]}"
    assert not extra, f"rows for lines that are blank or do not exist: {extra[:10]}"
    wrong = [(k, expected[k]["expect"], got) for k, got in seen.items() if expected[k]["expect"] != got]
    assert not wrong, f"wrong outcome (line, expected, got): {wrong[:10]}"
    for r in pairs:
        e = expected[(r.source_file, r.source_line)]
        assert (r.pair_id, r.discipline, r.arxiv_id, r.image_sha256, r.image_format) == (
            e["pair_id"], e["discipline"], e["arxiv_id"], e["image_sha256"], e["image_format"]), (r, e)
    return pairs, quarantine


def assert_image_bytes(spark, lake, pairs) -> None:
    """Every pair's image is stored, and the stored bytes hash to its image_sha256."""
    stored = {r.image_sha256: r for r in
              table_rows(spark, lake, "images", "image_sha256", "content", "thumbnail", "width", "height")}
    for p in pairs:
        row = stored.get(p.image_sha256)
        assert row is not None, f"pair {p.pair_id}: image {p.image_sha256} not in images"
        assert hashlib.sha256(row.content).hexdigest() == p.image_sha256
        assert row.thumbnail[:2] == b"\xff\xd8", "thumbnail is not a JPEG"


def snapshot(spark, lake, name: str, drop=("ingest_run_id", "ingested_at")) -> list:
    """A table's rows without run ids and times, sorted: what two equivalent runs must share."""
    df = lake_at(str(lake)).read(spark, name)
    cols = [c for c in df.columns if c not in drop]
    return sorted(tuple(r) for r in df.select(*cols).collect())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def browse(page: Path, tmp_path: Path, requests: list | None = None) -> str:
    """The page's DOM after it loaded in headless Chromium (scripts run, pictures decoded), no network: every
    host name resolves to nothing. With `requests`, the URLs the page itself asked for (from Chromium's net
    log, so a request that failed for want of a network still counts; the browser's own calls home do not)
    are appended to it."""
    if not CHROMIUM:
        pytest.skip("Debian's chromium is not installed (./build.sh test installs it)")
    netlog = tmp_path / f"netlog-{time.monotonic_ns()}.json"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'chromium'}", "--host-resolver-rules=MAP * ~NOTFOUND",
           f"--log-net-log={netlog}", "--virtual-time-budget=10000", "--dump-dom", page.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    if requests is not None:
        log = json.loads(netlog.read_text())
        start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
        for event in log["events"]:
            params = event.get("params") or {}
            # the browser's own requests (updates, time) carry no initiating origin; the page's carry its own
            if event["type"] == start and "url" in params and params.get("initiator") != "not an origin":
                requests.append(params["url"])
    return proc.stdout


def ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]


def kill_9_after(job: str, args: list[str], marker: str) -> None:
    """Start jobs/<job>.py through spark-submit and kill -9 its whole process group once it logs `marker`."""
    signal_after(job, args, marker, signal.SIGKILL)


def signal_after(job: str, args: list[str], marker: str, signum: int) -> str:
    """Start jobs/<job>.py through spark-submit, send `signum` to its whole process group (as Ctrl-C in a
    terminal, or a scheduler stopping it, does) once it logs `marker`; returns what it printed after."""
    cmd = [str(BIN / "spark-submit"), "--master", "local[2]", str(REPO / "jobs" / f"{job}.py"), *args]
    # spark-submit passes the Python driver's stderr (our log) through its stdout: read both.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                            env={**os.environ, "PYSPARK_PYTHON": sys.executable}, start_new_session=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if marker in line:
            os.killpg(proc.pid, signum)
            break
    after = proc.stdout.read()
    proc.wait(timeout=120)
    expected = -signal.SIGKILL if signum == signal.SIGKILL else 128 + signum
    assert proc.returncode == expected, "".join(seen[-20:]) + after
    return after


def s3_cfg(cfg, endpoint: str, tmp_path):
    """cfg for moto; its own catalog database: the shared session's catalog must not keep tables that
    point into a moto server that later tests no longer have (loading them would retry for minutes)."""
    return dataclasses.replace(
        cfg, s3=dataclasses.replace(cfg.s3, endpoint_url=endpoint, path_style_access=True),
        catalog=dataclasses.replace(cfg.catalog, database=f"s1mmalign_s3_{os.urandom(3).hex()}"),
        clip=dataclasses.replace(cfg.clip, batch_size=16, decode_threads=2, text_workers=0,
                                 cache_dir=str(tmp_path / "ckpt-cache")))


def chunked(store, rel, data: bytes, size: int):
    """tasks.chunk_lines over data cut into chunks of `size` bytes, as the JSONL stage cuts a file."""
    out, before = [], 0
    for start in range(0, max(len(data), 1), size):
        end = min(start + size, len(data))
        out += list(tasks.chunk_lines(store, rel, start, end, before))
        before += data[start:end].count(b"\n")
    return out


def header_bomb(claimed: int, before: bytes = b"", kind: bytes = b"L") -> bytes:
    """A gzip tar: `before` (whole tar blocks), then an extended header of type `kind` (GNU long name "L",
    PAX "x") that claims `claimed` bytes, which follow as zeros: a tiny archive (gzip of zeros) whose header
    would be hundreds of MB."""
    import tarfile
    import zlib

    header = tarfile.TarInfo("././@LongLink" if kind == tarfile.GNUTYPE_LONGNAME else "./PaxHeaders/x")
    header.type, header.size = kind, claimed
    block = header.tobuf(format=tarfile.GNU_FORMAT if kind == tarfile.GNUTYPE_LONGNAME else tarfile.USTAR_FORMAT)
    z = zlib.compressobj(1, zlib.DEFLATED, 31)
    out = [z.compress(before + block)]
    zeros = bytes(1 << 20)
    out += [z.compress(zeros) for _ in range(-(-claimed // len(zeros)))]
    return b"".join(out) + z.flush()


def run_job(job: str, *args: str, env: dict | None = None, timeout: int = 600,
            submit: bool = True, submit_args: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run jobs/<job>.py through spark-submit (or plain python) as a user would."""
    cmd = ([str(BIN / "spark-submit"), "--master", "local[2]", *submit_args] if submit else [sys.executable])
    cmd += [str(REPO / "jobs" / f"{job}.py"), *args]
    full_env = {**os.environ, "PYSPARK_PYTHON": sys.executable, **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=REPO)


def result_numbers(results) -> dict:
    """expectation key -> what a result says of the lake (not its examples): success, element and unexpected
    counts, unexpected percent and observed value (floats compared as pytest.approx)."""
    out = {}
    for r in results:
        observed = json.loads(r.observed_value) if r.observed_value else None
        if isinstance(observed, float):
            observed = pytest.approx(observed)
        elif isinstance(observed, dict) and observed.get("unexpected_percent") is not None:
            observed = {**observed, "unexpected_percent": pytest.approx(observed["unexpected_percent"])}
        out[r.key] = (r.success, r.element_count, r.unexpected_count,
                      None if r.unexpected_percent is None else pytest.approx(r.unexpected_percent), observed)
    return out
