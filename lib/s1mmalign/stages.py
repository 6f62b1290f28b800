"""The one stage convention of the pipelines (ingest, validate, score_clip): run ids, and a timer that
logs one line per stage and tags an error with the stage it broke in."""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
import threading
import time
import uuid
from datetime import datetime, timezone

from s1mmalign.errors import Stopped

log = logging.getLogger("s1mmalign")

# One format for every job's run id: an optional job letter, the UTC start to the second, 8 random hex
# digits. Sorting run ids of one job sorts them by start time (the views' "latest run" relies on it).
RUN_PREFIX = {"ingest": "", "validate": "v"}


def new_run_id(job: str, now: datetime | None = None) -> str:
    """e.g. 20261129T093432Z-39525e7a (ingest), v20261129T093512Z-0f060d51 (validate)."""
    now = now or datetime.now(timezone.utc)
    return f"{RUN_PREFIX[job]}{now.astimezone(timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


_watching: dict[str, str] = {}          # "prog": the job whose signals are watched (set by cli.main)
STOPPED: list[int] = []                 # the signal that stopped the job, once one did


def watch_signals(prog: str | None = None) -> None:
    """Make SIGINT and SIGTERM stop the job with one line of its own (then Stopped in the main thread; the
    job's exit code is 128 + the signal's number): cli.main calls it first, and session.build again after
    Spark's context took SIGINT for itself. Whatever else breaks while the job stops (Py4J calls to a JVM
    that got the same signal, threads, the log) is not printed: one line is the whole story."""
    if prog:
        _watching["prog"] = prog
    if "prog" not in _watching or threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _stop)


def _stop(signum: int, frame) -> None:
    if STOPPED:
        return                  # a second signal while stopping: stopping already
    STOPPED.append(signum)
    name = signal.Signals(signum).name
    print(f"{_watching['prog']}: stopped by {name}: nothing after its last complete commit is kept; run it "
          f"again to finish (a re-run converges to one clean run's tables)", file=sys.stderr, flush=True)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)     # for the rest of the process (tracebacks of threads too)
    raise Stopped(signum)


RUN_ID = re.compile(r"^[a-z]?[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}$")

# A run's staging folder (ingest.staging_dir/<run id>) holds this file from its start: only folders that
# hold it and are named as a run id are ever removed, whatever the staging setting points at.
STAGING_MARKER = "_s1mmalign_staging"


def start_staging(scratch, run_id: str) -> None:
    """Mark the store `scratch` (a run's staging folder) as staging, before anything is written to it."""
    scratch.put(STAGING_MARKER, run_id.encode())


def clear_staging(lake_store, staging_dir: str) -> list[str]:
    """Remove the runs' staging folders under staging_dir of the lake's store: each folder named as a run id
    that holds the staging marker, nothing else (a file or folder someone else put there stays). Returns
    the folders removed."""
    removed = []
    for name in lake_store.list_dir(staging_dir)[0]:
        folder = f"{staging_dir}/{name}"
        if RUN_ID.match(name) and lake_store.get(f"{folder}/{STAGING_MARKER}") is not None:
            lake_store.remove_tree(folder)
            removed.append(folder)
    dirs, files = lake_store.list_dir(staging_dir)
    if removed and not dirs and not files:
        lake_store.remove_tree(staging_dir)         # the folder itself, now empty
    return removed


PROGRESS = {"seconds": 30.0}      # how often a running stage logs a progress line (0: never); cli sets it


def progress_every(seconds: float) -> None:
    """Set how often a running Stage logs its progress (config spark.progress_seconds; 0 turns it off)."""
    PROGRESS["seconds"] = float(seconds)


class SparkProgress:
    """What Spark's status tracker says of the work since a stage began: tasks done of those known, the
    rows and bytes the finished tasks read and wrote, the rate, and an ETA for the Spark stages running."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.done: dict[int, int] = {}         # Spark stage id -> tasks completed (every stage seen)
        self.total: dict[int, int] = {}
        self.io: dict[int, tuple[int, int, int]] = {}   # stage id -> (rows in, bytes in, bytes out)

    def _context(self):
        try:
            from pyspark import SparkContext
        except ImportError:
            return None
        return SparkContext._active_spark_context

    def poll(self) -> str | None:
        """One progress line, or None when no Spark work ran yet (or no session is up)."""
        sc = self._context()
        if sc is None:
            return None
        tracker = sc.statusTracker()
        active = [info for info in (tracker.getStageInfo(i) for i in tracker.getActiveStageIds()) if info]
        for info in active:
            self.done[info.stageId] = info.numCompletedTasks
            self.total[info.stageId] = info.numTasks
        self._read_io()
        if not self.total:
            return None
        elapsed = time.perf_counter() - self.t0
        done, total = sum(self.done.values()), sum(self.total.values())
        rate = done / elapsed if elapsed > 0 else 0.0
        left = sum(i.numTasks - i.numCompletedTasks for i in active)
        eta = f"ETA {left / rate:.0f}s" if rate > 0 and left else ("ETA ?" if left else "no task running")
        rows, read, written = (sum(v[k] for v in self.io.values()) for k in range(3))
        return (f"tasks {done}/{total} ({len(active)} Spark stage(s) running), {rows:,} rows, "
                f"{read / 1e6:,.1f} MB read, {written / 1e6:,.1f} MB written, {rate:.1f} tasks/s, {eta}")

    def _read_io(self) -> None:
        """Rows and bytes of the running Spark stages, from the JVM's status store (best effort: this only
        informs a log line)."""
        sc = self._context()
        try:
            stages = sc._jsc.sc().statusStore().activeStages()
            for k in range(stages.size()):
                st = stages.apply(k)
                self.io[st.stageId()] = (st.inputRecords(), st.inputBytes() + st.shuffleReadBytes(),
                                         st.outputBytes() + st.shuffleWriteBytes())
        except Exception as exc:  # noqa: BLE001 - a JVM without these fields must not stop the job
            log.debug("progress: no I/O figures (%s)", exc)


class Stage:
    """Times a stage and logs one line for it: `stage <name> <count> <what> in <s>s (<rate>/s); <extra>`;
    while it runs, a progress line every PROGRESS seconds (`progress <name> tasks 12/35 ..., ETA 40s`) from
    Spark's status tracker, so that a user watching a cluster job or an Airflow log sees it move.

    An exception leaving the block carries the stage's name (`exc.stage`), for the one line a job prints
    (e.g. which stage ran out of memory, cli.out_of_memory).
    """

    def __init__(self, name: str, logger: logging.Logger | None = None):
        self.name = name
        self.log = logger or log
        self.seconds = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Stage:
        self.t0 = time.perf_counter()
        if PROGRESS["seconds"] > 0:
            self._thread = threading.Thread(target=self._report, name=f"progress-{self.name}", daemon=True)
            self._thread.start()
        return self

    def _report(self) -> None:
        progress = SparkProgress()
        while not self._stop.wait(PROGRESS["seconds"]):
            try:
                line = progress.poll()
            except Exception as exc:  # noqa: BLE001 - a progress line never fails the job
                line = f"(no progress: {type(exc).__name__})"
            self.log.info("progress %-8s %.0fs in: %s", self.name, time.perf_counter() - self.t0,
                          line or "no Spark task yet")

    def _stop_reporting(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def done(self, count: int, what: str, extra: str = "") -> None:
        self._stop_reporting()
        self.seconds = secs = time.perf_counter() - self.t0
        rate = count / secs if secs > 0 else 0.0
        self.log.info("stage %-8s %d %s in %.1fs (%.0f/s)%s", self.name, count, what, secs, rate,
                      f"; {extra}" if extra else "")

    def __exit__(self, exc_type, exc, tb):
        self._stop_reporting()
        if exc is not None and not hasattr(exc, "stage"):
            try:
                exc.stage = self.name
            except AttributeError:
                pass
        return False
