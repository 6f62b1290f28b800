"""spark-sql over a lake's catalog: `python -m s1mmalign.sqlshell --lake LAKE [spark-sql args...]`.

The jobs register their tables as s1mmalign.<table> in a Hive metastore kept under the lake; this
starts Spark's own spark-sql CLI on that metastore, e.g. `... -e "SELECT count(*) FROM s1mmalign.pairs"`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from s1mmalign import config, session


def command(lake: str, cfg: config.Config, extra: list[str]) -> list[str]:
    """The spark-sql command line for a lake."""
    import pyspark

    exe = shutil.which("spark-sql", path=str(Path(sys.executable).parent)) or \
        str(Path(pyspark.__file__).parent / "bin" / "spark-sql")
    cmd = [exe, "--master", cfg.spark.master or "local[*]"]
    for key, value in session.session_settings(lake, cfg).items():
        cmd += ["--conf", f"{key}={value}"]
    return cmd + extra


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="s1mmalign.sqlshell", description=__doc__.splitlines()[0])
    p.add_argument("--lake", required=True)
    p.add_argument("--conf", default=None)
    args, extra = p.parse_known_args(argv)
    if not Path(args.lake, "pairs").is_dir():
        print(f"sqlshell: error: no lake at {args.lake} (run jobs/ingest.py first)", file=sys.stderr)
        return 2
    cfg = config.load(args.conf)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    cmd = command(args.lake, cfg, extra)
    os.execv(cmd[0], cmd)
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
