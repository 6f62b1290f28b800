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


class Stage:
    """Times a stage and logs one line for it: `stage <name> <count> <what> in <s>s (<rate>/s); <extra>`.

    An exception leaving the block carries the stage's name (`exc.stage`), for the one line a job prints
    (e.g. which stage ran out of memory, cli.out_of_memory).
    """

    def __init__(self, name: str, logger: logging.Logger | None = None):
        self.name = name
        self.log = logger or log
        self.seconds = 0.0

    def __enter__(self) -> Stage:
        self.t0 = time.perf_counter()
        return self

    def done(self, count: int, what: str, extra: str = "") -> None:
        self.seconds = secs = time.perf_counter() - self.t0
        rate = count / secs if secs > 0 else 0.0
        self.log.info("stage %-8s %d %s in %.1fs (%.0f/s)%s", self.name, count, what, secs, rate,
                      f"; {extra}" if extra else "")

    def __exit__(self, exc_type, exc, tb):
        if exc is not None and not hasattr(exc, "stage"):
            try:
                exc.stage = self.name
            except AttributeError:
                pass
        return False
