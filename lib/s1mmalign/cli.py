"""What every job's entry point shares: flags, logging, one clear line and an exit code on failure."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from typing import Callable
from urllib.parse import urlparse

from s1mmalign import stages
from s1mmalign.errors import JobError, UsageError
from s1mmalign.storage import hadoop_uri, remote


def lake_uri(lake: str, *, existing: bool = True) -> str:
    """--lake as the jobs use it: a local folder (existing: it must be one already), or s3://bucket/prefix
    (given to Spark as s3a://); UsageError otherwise."""
    if remote(lake):
        parsed = urlparse(lake)
        if parsed.scheme not in ("s3", "s3a") or not parsed.netloc:
            raise UsageError(f"--lake {lake}: use a local folder or s3://bucket/prefix")
        return hadoop_uri(lake).rstrip("/")
    if existing and not os.path.isdir(lake):
        raise UsageError(f"--lake {lake} is not a folder")
    if os.path.exists(lake) and not os.path.isdir(lake):
        raise UsageError(f"--lake {lake} exists and is not a folder")
    return lake


def discover_source(source: str, cfg):
    """--source listed before Spark starts (sources.discover's (store, plan)): a path that is not a folder,
    or a root with no sources, fails fast in one line."""
    from s1mmalign import sources
    from s1mmalign.storage import Store

    if "://" not in source and not os.path.isdir(source):
        raise UsageError(f"--source {source} is not a folder")
    return sources.discover(Store.from_uri(source, cfg.s3.endpoint_url, cfg.s3.region), cfg.ingest.archive_suffix)


def require_out_folder(out: str | None) -> str | None:
    """--out as the jobs use it (s3:// stays as given); UsageError when it names something that exists
    and is not a folder."""
    if out and not remote(out) and os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {out} exists and is not a folder")
    return out


_EXECUTOR_OOM = re.compile(r"exit (code|status):? ?52\b")   # an executor JVM that died of OutOfMemoryError


def out_of_memory(exc: BaseException) -> str | None:
    """The one line for a job that ran out of memory (which stage, which setting to raise), else None.

    exc carries the stage it broke in (`exc.stage`, set by the pipelines' Stage helper). Spark reports a
    JVM heap exhausted as java.lang.OutOfMemoryError in the error's text, an executor killed by it as
    exit code 52, and a local-mode JVM that died of it by that exit code of the process itself.
    """
    from s1mmalign.session import jvm_exit_code

    stage = getattr(exc, "stage", None)
    where = f" in stage {stage}" if stage else ""
    text = f"{type(exc).__name__}: {exc}"
    if "OutOfMemoryError" in text or _EXECUTOR_OOM.search(text) or jvm_exit_code() == 52:
        return (f"out of memory{where}: the Spark JVM's heap ran out; raise spark.driver.memory in local mode "
                f"(spark-submit --driver-memory 4g) or spark.executor.memory on a cluster")
    if isinstance(exc, MemoryError) or "MemoryError" in text:
        return (f"out of memory{where}: a Python worker ran out; give the executors more memory "
                f"(spark.executor.pyspark.memory, spark.executor.memoryOverhead) or lower ingest.archive_slice_bytes")
    return None


def one_line(exc: BaseException) -> str:
    """What went wrong, in one line: for an error raised in the JVM, its Java exception and message (not
    Py4J's "An error occurred while calling o123.save"), with Spark's error class when it has one."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if lines and lines[0].startswith("An error occurred while calling"):
        return next((ln.lstrip(": ") for ln in lines[1:] if not ln.startswith("at ")), "")[:500]
    return f"{type(exc).__name__}: {lines[0][:500] if lines else ''}"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, no usage dump
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    """An argument parser with the flags every job takes (--lake, --conf, --log-level)."""
    p = _Parser(prog=prog, description=description)
    p.add_argument("--lake", required=True,
                   help="lake root: a folder or s3://bucket/prefix that holds the Delta tables")
    p.add_argument("--conf", default=None, help="an environment config file, e.g. conf/local.yaml")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("py4j", "botocore", "boto3", "urllib3", "PIL", "great_expectations"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(prog: str, body: Callable[[], int]) -> None:
    """Run a job body; a JobError (errors.py) is one line on stderr and exit 2, anything else one line and exit 1;
    SIGINT and SIGTERM one line (stages.watch_signals) and exit 130 and 143."""
    stages.watch_signals(prog)
    try:
        code = body()
    except BaseException as exc:     # noqa: BLE001 (each kind gets its one line below)
        code = _exit_code(prog, exc)
    sys.exit(code)


def _exit_code(prog: str, exc: BaseException) -> int:
    if stages.STOPPED:               # stopped by a signal (its line printed then), whatever broke after it
        return 128 + stages.STOPPED[0]
    if isinstance(exc, SystemExit):
        raise exc
    if isinstance(exc, JobError):
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    if isinstance(exc, KeyboardInterrupt):
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    if not isinstance(exc, Exception):
        raise exc
    logging.getLogger(prog).debug("failure", exc_info=True)  # anything else: still one line, with the type
    print(f"{prog}: {out_of_memory(exc) or f'failed: {one_line(exc)}'}", file=sys.stderr)
    return 1
