"""SQL analytics on caption quality: the views of sql/ in the catalog, report.html, summary.json, plots.

    spark-submit jobs/report.py --lake LAKE_ROOT_OR_S3_URI --out DIR_OR_S3_URI [--conf conf/X.yaml]
    spark-submit jobs/report.py --lake LAKE_ROOT --views-only     # (re)create the views, write nothing

The views are created as s1mmalign.<view> (persistent: a later spark-sql session sees them); those whose
tables are missing (no CLIP scores, no validate run yet) are dropped, and the page says so.
"""

import _bootstrap  # noqa: F401
from s1mmalign import analytics, cli, config, delta_io, errors, report, session
from s1mmalign.storage import remote

NEEDED = ("pairs", "quarantine")


def body() -> int:
    p = cli.parser("report", __doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="folder for report.html, summary.json and the PNG plots")
    p.add_argument("--views-only", action="store_true", help="only (re)create the views in the catalog")
    args = p.parse_args()
    if not args.out and not args.views_only:
        raise errors.UsageError("--out DIR is required (or --views-only)")
    cli.setup_logging(args.log_level)
    cfg = config.load(args.conf)
    lake = cli.lake_uri(args.lake)
    out = cli.require_out_folder(args.out)
    analytics.load_views(cfg)   # a broken view file fails here, before Spark starts
    delta_io.require_tables(lake, NEEDED, s3=cfg.s3)
    # Reads only; the views go to the catalog, which a local lake keeps beside its tables (so it takes
    # the lake's lease there) and an object-store lake keeps in this session alone.
    spark = session.build(lake, cfg, write=not remote(lake))
    try:
        views = analytics.create_views(spark, cfg, lake)
        summary = None if args.views_only else analytics.collect(spark, cfg, lake, views)
    finally:
        session.stop(spark)
    names = ", ".join(f"{cfg.catalog.database}.{v.name}" for v in views.created)
    if summary is None:
        print(f"report: {len(views.created)} views in the catalog ({names})")
        return 0
    written = report.write(out, summary, cfg.s3)
    pairs = (summary["views"].get("overview") or [{}])[0].get("pairs", 0)
    models = len({r["model"] for r in summary["views"].get("clip_stats", [])})
    print(f"report: {written['report']} ({pairs} pairs, {models} CLIP model(s), {len(written['plots'])} plots; "
          f"{len(views.created)} views in the catalog)")
    return 0


if __name__ == "__main__":
    cli.main("report", body)
