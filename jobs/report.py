"""SQL analytics on caption quality: the views of sql/ in the catalog, report.html, summary.json, plots.

    spark-submit jobs/report.py --lake LAKE_ROOT_OR_S3_URI --out DIR_OR_S3_URI [--conf conf/X.yaml]
    spark-submit jobs/report.py --lake LAKE_ROOT --views-only     # (re)create the views, write nothing

The views are created as s1mmalign.<view> (persistent: a later spark-sql session sees them); those whose
tables are missing (no CLIP scores, no validate run yet) are dropped, and the page says so.
"""

import _bootstrap  # noqa: F401
from s1mmalign import cli, errors
from s1mmalign.report import analytics, page

NEEDED = ("pairs", "quarantine")


def flags(p) -> None:
    p.add_argument("--out", default=None, help="folder for report.html, summary.json and the PNG plots")
    p.add_argument("--views-only", action="store_true", help="only (re)create the views in the catalog")


def prepare(ctx) -> None:
    if not ctx.args.out and not ctx.args.views_only:
        raise errors.UsageError("--out DIR is required (or --views-only)")
    cli.require_out_folder(ctx.args.out)
    analytics.load_views(ctx.cfg)   # a broken view file fails here, before Spark starts


def run(ctx):
    views = analytics.create_views(ctx.spark, ctx.cfg, ctx.lake)
    return views, None if ctx.args.views_only else analytics.collect(ctx.spark, ctx.cfg, ctx.lake, views)


def summary(ctx, result) -> None:
    views, collected = result
    names = ", ".join(f"{ctx.cfg.catalog.database}.{v.name}" for v in views.created)
    if collected is None:
        print(f"report: {len(views.created)} views in the catalog ({names})")
        return
    written = page.write(ctx.args.out, collected, ctx.cfg.s3)
    pairs = (collected["views"].get("overview") or [{}])[0].get("pairs", 0)
    models = len({r["model"] for r in collected["views"].get("clip_stats", [])})
    print(f"report: {written['report']} ({pairs} pairs, {models} CLIP model(s), {len(written['plots'])} plots; "
          f"{len(views.created)} views in the catalog)")


if __name__ == "__main__":
    # Reads only; the views go to the catalog, which a local lake keeps beside its tables (so it takes the
    # lake's lease there) and an object-store lake keeps in this session alone.
    cli.job(cli.Job("report", __doc__, run, flags=flags, prepare=prepare, needs=NEEDED,
                    writes=lambda ctx: not ctx.lake.remote, summary=summary))
