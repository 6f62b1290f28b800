"""The run history: `job_runs`, one row per run of a job that writes the lake (what it read, wrote, and how
it ended), appended by the job template (cli) when the job ends, while it still holds the lake's lease.

Written with delta-rs (a tiny append, no Spark job: a job that failed in Spark still gets its row, and one
whose JVM died too). The versions read are each table's newest commit when the job started; the versions
written, those its commits made (the newest commit of each table it changed); the bytes, the data files
its writes added (Lake.bytes_written).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from datetime import datetime
from typing import Any

from s1mmalign.lake import schemas

log = logging.getLogger(__name__)
TABLE = "job_runs"
_COMMIT = re.compile(r"^(\d{20})\.json$")


def versions(lake) -> dict[str, int]:
    """The newest commit version of every lake table that has one, from a listing of each log (no Spark,
    no log replay)."""
    out = {}
    for name in schemas.lake_tables():
        _, files = lake.store().list_dir(f"{name}/_delta_log")      # a table not made yet: no file
        found = [int(m.group(1)) for f in files if (m := _COMMIT.match(f.rel.rsplit("/", 1)[-1]))]
        if found:
            out[name] = max(found)
    return out


def settings_digest(cfg) -> str:
    """A short digest of the settings a job ran with (its conf, flags applied): equal digests, equal settings."""
    text = json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def counts(result: Any) -> dict:
    """What a job's summary counted: its numbers and words as they are, its lists as their lengths."""
    if not dataclasses.is_dataclass(result):
        return {}
    out = {}
    for f in dataclasses.fields(result):
        value = getattr(result, f.name)
        if isinstance(value, bool | int | float | str) or value is None:
            out[f.name] = value
        elif isinstance(value, list | tuple | dict | set):
            out[f"{f.name}_n"] = len(value)
    if getattr(result, "critical_failures", None) is not None:     # validate's verdict
        out["critical_failures_n"] = len(result.critical_failures)
    return out


def record(lake, *, job: str, run_id: str, started: datetime, ended: datetime, status: str, exit_code: int,
           result: Any, before: dict[str, int], cfg, detail: str | None = None) -> None:
    """Append the run's row to job_runs (created on first use); a failure to record is logged, never the
    job's failure."""
    import pyarrow as pa
    from deltalake import write_deltalake

    try:
        lake.check_lease()
        after = versions(lake)
        row = {"job": job, "run_id": run_id, "started_at": started, "ended_at": ended,
               "seconds": (ended - started).total_seconds(), "status": status, "exit_code": exit_code,
               "counts": json.dumps(counts(result), sort_keys=True, default=str),
               "versions_read": json.dumps(before, sort_keys=True),
               "versions_written": json.dumps({t: v for t, v in after.items()
                                               if t != TABLE and before.get(t) != v}, sort_keys=True),
               "bytes_written": json.dumps(dict(sorted(lake.bytes_written.items()))),
               "settings_digest": settings_digest(cfg), "detail": detail}
        uri, options = lake.delta_rs(TABLE)
        write_deltalake(uri, pa.Table.from_pylist([row], schema=schemas.table(TABLE).arrow()), mode="append",
                        storage_options=options or None)
    except Exception as exc:  # noqa: BLE001 - the history must never turn a run's outcome
        log.warning("job_runs: the run of %s was not recorded (%s: %s)", job, type(exc).__name__, exc)
