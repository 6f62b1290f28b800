"""What every job's entry point shares: the job template (Job, job: flags, logging, config with the flags as
overrides, the Lake, the tables it needs, the session, the run, the summary line, the exit code), and one
clear line and an exit code on failure."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

from s1mmalign import stages
from s1mmalign.errors import JobError, Stopped, UsageError
from s1mmalign.lake.storage import remote


def discover_source(source: str, cfg):
    """--source listed before Spark starts (sources.discover's (store, plan)): a path that is not a folder,
    or a root with no sources, fails fast in one line."""
    from s1mmalign.ingest import sources
    from s1mmalign.lake.storage import Store

    if not remote(source) and not os.path.isdir(source):
        raise UsageError(f"--source {source} is not a folder")
    return sources.discover(Store.from_uri(source, cfg.s3), cfg.ingest.archive_suffix)


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
    from s1mmalign.lake.session import jvm_exit_code

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
    except Stopped as exc:           # a signal (its line printed then): 128 + its number
        code = 128 + exc.args[0]
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


# --------------------------------------------------------------------------------------- the job template

@dataclass
class Context:
    """What a job's steps get: its flags, its conf (flags already in it), its lake and, once built, the
    Spark session; `state` carries what `prepare` found for `run`."""
    args: argparse.Namespace
    cfg: Any
    lake: Any
    spark: Any = None
    state: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Job:
    """One job: what jobs/<name>.py declares, and `job()` runs the same way for all of them.

    flags        adds the job's own flags to the parser (--lake, --conf, --log-level are every job's)
    overrides    the flags given, as config overrides ({"section": {"key": value}}): config.load applies them
                 with the same checks as the conf files, so a flag's default lives only in its section
    existing     whether --lake must already be a folder (ingest and plan make a new lake)
    prepare      checks before Spark starts (files, suites, the model); may set ctx.state, or ctx.cfg
    needs        tables that must exist (Lake.require), before Spark starts
    intact       tables whose data files must all be there (Lake.require_intact)
    writes       whether the job takes the lake's lease (a function of the Context when it depends)
    spark        False: the job runs without a session (plan)
    run          the work; returns what `summary` turns into the job's line(s) and exit code
    summary      after the session stopped: prints the summary line(s), returns the exit code (default 0)
    """
    name: str
    doc: str
    run: Callable[[Context], Any]
    flags: Callable[[argparse.ArgumentParser], None] | None = None
    overrides: Callable[[argparse.Namespace], dict] | None = None
    existing: bool = True
    prepare: Callable[[Context], None] | None = None
    needs: Sequence[str] = ()
    intact: Sequence[str] = ()
    writes: bool | Callable[[Context], bool] = True
    spark: bool = True
    summary: Callable[[Context, Any], int | None] | None = None


def _ending(failure: BaseException | None, result: Any) -> tuple[str, int]:
    """(status, exit code) of a run for job_runs: ok, failed (validate: a critical expectation failed; or an
    error) or stopped (a signal), with the code the job exits with."""
    if failure is None:
        critical = getattr(result, "critical_failures", None)
        return ("failed", 1) if critical else ("ok", 0)
    if stages.STOPPED:
        return "stopped", 128 + stages.STOPPED[0]
    return "failed", 2 if isinstance(failure, JobError) else 1


def flag_overrides(args: argparse.Namespace, section: str, names: Sequence[str]) -> dict:
    """The flags of `names` that were given (not None), as overrides of conf `section`."""
    given = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
    return {section: given} if given else {}


def job(spec: Job) -> None:
    """Run a job as its jobs/<name>.py declares it (the process exits with its code)."""
    main(spec.name, lambda: _run(spec))


def _run(spec: Job) -> int:
    from s1mmalign import config
    from s1mmalign.lake.root import Lake

    p = parser(spec.name, spec.doc.strip().splitlines()[0])
    if spec.flags:
        spec.flags(p)
    args = p.parse_args()
    setup_logging(args.log_level)
    cfg = config.load(args.conf, overrides=spec.overrides(args) if spec.overrides else None)
    stages.progress_every(cfg.spark.progress_seconds)
    ctx = Context(args, cfg, Lake.open(args.lake, cfg, existing=spec.existing))
    if spec.prepare:
        spec.prepare(ctx)
    ctx.lake.require(spec.needs)
    if spec.intact:
        ctx.lake.require_intact(spec.intact)
    if not spec.spark:
        result = spec.run(ctx)
    else:
        from s1mmalign.lake import runs, session

        writes = spec.writes(ctx) if callable(spec.writes) else spec.writes
        started, before = datetime.now(timezone.utc), runs.versions(ctx.lake) if writes else {}
        result, failure = None, None
        ctx.spark = session.build(ctx.lake, ctx.cfg, write=writes)      # the lease names the job by its script
        try:
            result = spec.run(ctx)
        except BaseException as exc:
            failure = exc
            raise
        finally:
            if writes:      # while the lease is still held: the run's row in job_runs
                status, code = _ending(failure, result)
                runs.record(ctx.lake, job=spec.name, run_id=getattr(result, "run_id", None)
                            or f"{spec.name}-{started:%Y%m%dT%H%M%SZ}-{os.getpid()}", started=started,
                            ended=datetime.now(timezone.utc), status=status, exit_code=code, result=result,
                            before=before, cfg=ctx.cfg, detail=None if failure is None else one_line(failure))
            session.stop(ctx.spark)
    code = spec.summary(ctx, result) if spec.summary else None
    return code or 0
