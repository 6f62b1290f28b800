"""Validate the lake's tables with the Great Expectations suites in expectations/.

    spark-submit jobs/validate.py --lake LAKE_ROOT_OR_S3_URI [--out DOCS_DIR_OR_S3_URI] [--conf conf/X.yaml]

Exit 0: every critical expectation passed (warnings are logged and recorded); 1: a critical one failed,
named on one line; 2: the job could not run.
"""

import sys

import _bootstrap  # noqa: F401
from s1mmalign import cli, config, delta_io, quality, session, validate


def body() -> int:
    p = cli.parser("validate", __doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="folder for Great Expectations' Data Docs (HTML); "
                                               "default <lake>/_quality/data_docs")
    args = p.parse_args()
    cli.setup_logging(args.log_level)
    cfg = config.load(args.conf)
    lake = cli.lake_uri(args.lake)
    out = cli.require_out_folder(args.out)
    quality.load_suites()   # a broken suite file or a lake without tables fails here, before Spark starts
    delta_io.require_tables(lake, validate.NEEDED, s3=cfg.s3)
    delta_io.require_intact(lake, (*validate.NEEDED, "clip_scores"), s3=cfg.s3)
    spark = session.build(lake, cfg)
    try:
        outcome = validate.run(spark, cfg, lake, out=out)
    finally:
        session.stop(spark)
    line = f"validate: {outcome.summary_line()} (run {outcome.run_id}, "
    line += f"Data Docs {outcome.docs_index})" if outcome.docs_index else f"no Data Docs: {outcome.docs_note})"
    if outcome.critical_failures:
        print(line, file=sys.stderr)
        return 1
    print(line)
    return 0


if __name__ == "__main__":
    cli.main("validate", body)
