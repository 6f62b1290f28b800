"""Ingest S1-MMAlign JSONL records and images into the lake's Delta tables.

    spark-submit jobs/ingest.py --source ROOT_OR_S3_URI --lake LAKE_ROOT_OR_S3_URI [--conf conf/X.yaml]
"""

import _bootstrap  # noqa: F401
from s1mmalign import cli, config, ingest, session


def body() -> int:
    p = cli.parser("ingest", __doc__.splitlines()[0])
    p.add_argument("--source", required=True, help="source root: a local folder or s3://bucket/prefix")
    args = p.parse_args()
    cli.setup_logging(args.log_level)
    cfg = config.load(args.conf)
    found = cli.discover_source(args.source, cfg)
    lake = cli.lake_uri(args.lake, existing=False)
    spark = session.build(lake, cfg)
    try:
        ingest.run(spark, cfg, args.source, lake, discovered=found)
    finally:
        session.stop(spark)
    return 0


if __name__ == "__main__":
    cli.main("ingest", body)
