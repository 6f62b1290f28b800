"""Maintain the lake's tables: OPTIMIZE (Z-ORDER pairs and clip_scores by arxiv_id), VACUUM, leftover staging.

    spark-submit jobs/maintain.py --lake LAKE_ROOT_OR_S3_URI [--conf conf/X.yaml]

Prints one line per table (files and bytes before and after, Delta version). Exit 0 done; 2 a bad flag,
path or config, or a lake without tables, in one line; 1 anything else, in one line.
"""

import _bootstrap  # noqa: F401
from s1mmalign import cli, config, delta_io, maintain, session


def body() -> int:
    p = cli.parser("maintain", __doc__.splitlines()[0])
    args = p.parse_args()
    cli.setup_logging(args.log_level)
    cfg = config.load(args.conf)
    lake = cli.lake_uri(args.lake)
    maintain.zorder_columns(cfg)          # a bad Z-order setting fails here, before Spark starts
    delta_io.require_tables(lake, ["pairs"], s3=cfg.s3)
    spark = session.build(lake, cfg)
    try:
        reports = maintain.run(spark, cfg, lake)
    finally:
        session.stop(spark)
    for r in reports:
        print(f"maintain: {r.line()}")
    return 0


if __name__ == "__main__":
    cli.main("maintain", body)
