"""spark-sql over a lake's catalog: `python -m s1mmalign.report.sqlshell --lake LAKE [spark-sql args...]`.

The jobs register their tables as s1mmalign.<table> in a Hive metastore kept under a local lake; this
starts Spark's own spark-sql CLI on that metastore, e.g. `... -e "SELECT count(*) FROM s1mmalign.pairs"`.
For a lake on S3 (s3://bucket/prefix), whose catalog lives only in a session, an init script registers
the tables it holds first. Reads only: it takes no lease.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from s1mmalign import config
from s1mmalign.lake import schemas, session
from s1mmalign.lake.root import Lake
from s1mmalign.lake.storage import SourceError


def command(lake: Lake, cfg: config.Config, extra: list[str]) -> list[str]:
    """The spark-sql command line for a lake."""
    import pyspark

    exe = shutil.which("spark-sql", path=str(Path(sys.executable).parent)) or \
        str(Path(pyspark.__file__).parent / "bin" / "spark-sql")
    cmd = [exe, "--master", cfg.spark.master or "local[*]"]
    for key, value in session.session_settings(lake, cfg).items():
        cmd += ["--conf", f"{key}={value}"]
    return cmd + extra


def _init_script(lake: Lake, cfg: config.Config, tables: list[str]) -> str:
    """A spark-sql init file that registers the lake's tables in the session's catalog."""
    import tempfile

    db = cfg.catalog.database
    lines = [f"CREATE DATABASE IF NOT EXISTS {db};"]
    lines += [lake.register_statement(t) + ";" for t in tables]
    fd, path = tempfile.mkstemp(prefix="s1mmalign-sql-", suffix=".sql")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="s1mmalign.report.sqlshell", description=__doc__.splitlines()[0])
    p.add_argument("--lake", required=True)
    p.add_argument("--conf", default=None)
    args, extra = p.parse_known_args(argv)
    cfg = config.load(args.conf)
    lake = Lake(args.lake, cfg.s3, cfg.catalog.database)     # reads only: no lease
    try:
        tables = [t for t in schemas.lake_tables() if schemas.table(t).catalog and lake.exists(t)]
    except SourceError as exc:
        print(f"sqlshell: error: {exc}", file=sys.stderr)
        return 2
    if "pairs" not in tables:
        print(f"sqlshell: error: no lake at {args.lake} (run jobs/ingest.py first)", file=sys.stderr)
        return 2
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    if lake.remote:
        extra = ["-i", _init_script(lake, cfg, tables)] + extra
    cmd = command(lake, cfg, extra)
    os.execv(cmd[0], cmd)
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
