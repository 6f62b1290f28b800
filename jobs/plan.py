"""Say which source files an ingest would read: those new or changed since ingest_log (reads only, no Spark).

    spark-submit jobs/plan.py --source ROOT_OR_S3_URI --lake LAKE_ROOT_OR_S3_URI [--conf conf/X.yaml]

Prints one line per file to read and a summary line. Exit 0: there is something to ingest; 99: nothing
changed (the Airflow DAG skips the rest of its run); 2: a bad flag, path or config, in one line.
"""

import _bootstrap  # noqa: F401
from s1mmalign import cli, config, delta_io, ingest, session

NOTHING_TO_DO = 99


def body() -> int:
    p = cli.parser("plan", __doc__.splitlines()[0])
    p.add_argument("--source", required=True, help="source root: a local folder or s3://bucket/prefix")
    args = p.parse_args()
    cli.setup_logging(args.log_level)
    cfg = config.load(args.conf)
    found = cli.discover_source(args.source, cfg)
    lake = cli.lake_uri(args.lake, existing=False)
    _, plan = found
    if not delta_io.exists(None, lake, "ingest_log", cfg.s3):      # a new lake: everything is new
        todo = [f.rel for s in plan.sources for f in s.jsonl] + [a.name for s in plan.sources for a in s.archives] \
            + [r.file.rel for s in plan.sources for r in s.refused]
    else:
        session.check_logs(lake)
        jsonl, archives, refused = ingest.changed(lake, plan, cfg.s3)     # ingest_log read without Spark
        todo = [f.rel for _, f in jsonl] + [a.name for a in archives] + [r.file.rel for _, r in refused]
    for rel in todo:
        print(f"plan: read {rel}")
    print(f"plan: {len(todo)} file(s) to ingest from {args.source}")
    return 0 if todo else NOTHING_TO_DO


if __name__ == "__main__":
    cli.main("plan", body)
