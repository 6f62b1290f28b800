"""Ingest S1-MMAlign JSONL records and images into the lake's Delta tables.

    spark-submit jobs/ingest.py --source ROOT_OR_S3_URI --lake LAKE_ROOT_OR_S3_URI [--conf conf/X.yaml]
"""

import os

import _bootstrap  # noqa: F401

from s1mmalign import cli, config, ingest, session, sources
from s1mmalign.storage import Store


def body() -> int:
    p = cli.parser("ingest", __doc__.splitlines()[0])
    p.add_argument("--source", required=True, help="source root: a local folder or s3://bucket/prefix")
    args = p.parse_args()
    cli.setup_logging(args.log_level)
    cfg = config.load(args.conf)
    if "://" not in args.source and not os.path.isdir(args.source):
        raise cli.UsageError(f"--source {args.source} is not a folder")
    lake = cli.lake_uri(args.lake, existing=False)
    # List the sources before Spark starts: a root with no sources fails fast, in one line.
    found = sources.discover(Store.from_uri(args.source, cfg.s3.endpoint_url, cfg.s3.region),
                             cfg.ingest.archive_suffix)
    spark = session.build(lake, cfg)
    try:
        ingest.run(spark, cfg, args.source, lake, discovered=found)
    finally:
        session.stop(spark)
    return 0


if __name__ == "__main__":
    cli.main("ingest", body)
