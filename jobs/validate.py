"""Validate the lake's tables with the Great Expectations suites in expectations/.

    spark-submit jobs/validate.py --lake LAKE_ROOT_OR_S3_URI [--out DOCS_DIR_OR_S3_URI] [--full] [--conf conf/X.yaml]

Near duplicates are found incrementally: the image hashes new since the last run are compared against the
stored band keys of the others. --full bands every hash anew (the maintain DAG runs it weekly).

Exit 0: every critical expectation passed (warnings are logged and recorded); 1: a critical one failed,
named on one line; 2: the job could not run.
"""

import sys

import _bootstrap  # noqa: F401
from s1mmalign import cli
from s1mmalign.validate import pipeline, quality


def flags(p) -> None:
    p.add_argument("--out", default=None, help="folder for Great Expectations' Data Docs (HTML); "
                                               "default <lake>/_quality/data_docs")
    p.add_argument("--full", action="store_true",
                   help="find near duplicates among every image hash anew, not only the new ones")


def prepare(ctx) -> None:
    cli.require_out_folder(ctx.args.out)
    quality.load_suites()   # a broken suite file fails here, before Spark starts


def summary(ctx, outcome) -> int:
    line = f"validate: {outcome.summary_line()} (run {outcome.run_id}, "
    line += f"Data Docs {outcome.docs_index})" if outcome.docs_index else f"no Data Docs: {outcome.docs_note})"
    if outcome.critical_failures:
        print(line, file=sys.stderr)
        return 1
    print(line)
    return 0


if __name__ == "__main__":
    cli.job(cli.Job("validate", __doc__, lambda ctx: pipeline.run(ctx.spark, ctx.cfg, ctx.lake, out=ctx.args.out,
                                                                   full=ctx.args.full),
                    flags=flags, prepare=prepare, needs=pipeline.NEEDED, intact=(*pipeline.NEEDED, *pipeline.OPTIONAL),
                    summary=summary))
