"""Maintain the lake's tables: OPTIMIZE (Z-ORDER pairs and clip_scores by arxiv_id), VACUUM, leftover staging.

    spark-submit jobs/maintain.py --lake LAKE_ROOT_OR_S3_URI [--conf conf/X.yaml]

Prints one line per table (files and bytes before and after, Delta version). Exit 0 done; 2 a bad flag,
path or config, or a lake without tables, in one line; 1 anything else, in one line.
"""

import _bootstrap  # noqa: F401
from s1mmalign import cli
from s1mmalign.lake import maintain


def summary(ctx, reports) -> None:
    for r in reports:
        print(f"maintain: {r.line()}")


if __name__ == "__main__":
    cli.job(cli.Job("maintain", __doc__, lambda ctx: maintain.run(ctx.spark, ctx.cfg, ctx.lake),
                    prepare=lambda ctx: maintain.zorder_columns(ctx.cfg),   # a bad Z-order setting: before Spark
                    needs=("pairs",), summary=summary))
