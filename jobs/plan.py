"""Say which source files an ingest would read or drop: those new, changed or gone since ingest_log (reads only,
no Spark).

    spark-submit jobs/plan.py --source ROOT_OR_S3_URI --lake LAKE_ROOT_OR_S3_URI [--conf conf/X.yaml]

Prints one line per file to read and a summary line. Exit 0: there is something to ingest; 99: nothing
changed (the Airflow DAG skips the rest of its run); 2: a bad flag, path or config, in one line.
"""

import _bootstrap  # noqa: F401
from s1mmalign import cli
from s1mmalign.ingest import pipeline
from s1mmalign.lake import session

NOTHING_TO_DO = 99


def flags(p) -> None:
    p.add_argument("--source", required=True, help="source root: a local folder or s3://bucket/prefix")


def run(ctx) -> list[str]:
    _, plan = cli.discover_source(ctx.args.source, ctx.cfg)
    if not ctx.lake.exists("ingest_log"):      # a new lake: everything is new
        return [f.rel for s in plan.sources for f in s.jsonl] + [a.name for s in plan.sources for a in s.archives] \
            + [r.file.rel for s in plan.sources for r in s.refused]
    session.check_logs(ctx.lake)
    return pipeline.changes(ctx.lake, plan).names()     # ingest_log read without Spark


def summary(ctx, todo: list[str]) -> int:
    for rel in todo:
        print(f"plan: read {rel}")
    print(f"plan: {len(todo)} file(s) to ingest from {ctx.args.source}")
    return 0 if todo else NOTHING_TO_DO


if __name__ == "__main__":
    cli.job(cli.Job("plan", __doc__, run, flags=flags, existing=False, spark=False, summary=summary))
