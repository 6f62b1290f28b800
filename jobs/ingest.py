"""Ingest S1-MMAlign JSONL records and images into the lake's Delta tables.

    spark-submit jobs/ingest.py --source ROOT_OR_S3_URI --lake LAKE_ROOT_OR_S3_URI [--conf conf/X.yaml]
"""

import _bootstrap  # noqa: F401
from s1mmalign import cli
from s1mmalign.ingest import pipeline


def flags(p) -> None:
    p.add_argument("--source", required=True, help="source root: a local folder or s3://bucket/prefix")


def prepare(ctx) -> None:
    ctx.state["found"] = cli.discover_source(ctx.args.source, ctx.cfg)    # listed before Spark starts


def run(ctx):
    return pipeline.run(ctx.spark, ctx.cfg, ctx.args.source, ctx.lake, discovered=ctx.state["found"])


if __name__ == "__main__":
    cli.job(cli.Job("ingest", __doc__, run, flags=flags, existing=False, prepare=prepare))
