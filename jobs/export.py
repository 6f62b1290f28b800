"""Export training shards (WebDataset tar or Parquet) from one consistent snapshot of the lake.

    spark-submit jobs/export.py --lake LAKE --out DIR_OR_S3 [--where SQL] [--dedup none|exact|near]
        [--model MODEL --min-score X --score-field caption|recaption] [--text recaption|caption|both]
        [--format webdataset|parquet] [--shard-size 512MB] [--image original|thumbnail] [--order storage|pair_id]
    spark-submit jobs/export.py --lake LAKE --out DIR_OR_S3 --from-manifest OLD_OUT/_manifest.json

--where is a Spark SQL condition over the pairs' columns (and score_caption, score_recaption, score_status
of --model's scores). --from-manifest exports exactly what an earlier export did: its spec, over the table
versions it read (Delta time travel), shard for shard byte-identical. Re-running over an unfinished --out
resumes it: complete shards are kept, the rest written. Every spec flag's default is the export conf
section's setting of the same name.
"""

import json

import _bootstrap  # noqa: F401
from s1mmalign import cli, config, errors
from s1mmalign.export import pipeline
from s1mmalign.export.spec import DEDUP, FORMATS, IMAGES, ORDERS, SCORE_FIELDS, TEXTS, Spec
from s1mmalign.lake.storage import Store, remote

SPEC_FLAGS = ("where", "dedup", "model", "min_score", "score_field", "text", "format", "shard_size", "image", "order")


def flags(p) -> None:
    p.add_argument("--out", required=True, help="folder or s3://bucket/prefix for the shards and _manifest.json")
    p.add_argument("--where", default=None, help="Spark SQL condition over pairs, the model's scores, the text "
                                                 "signals and fluency (lib/s1mmalign/export/select.py names them)")
    p.add_argument("--dedup", default=None, choices=DEDUP,
                   help="exact: one pair per exact image group; near: one per near-duplicate cluster too")
    p.add_argument("--model", default=None, help="a clip_scores model (name or id): its scores in each sample")
    p.add_argument("--min-score", type=float, default=None, help="keep pairs whose --model score is at least this")
    p.add_argument("--score-field", default=None, choices=SCORE_FIELDS,
                   help="the score --min-score compares (default: that of --text; caption for both)")
    p.add_argument("--text", default=None, choices=TEXTS, help="the text of each sample")
    p.add_argument("--format", default=None, choices=FORMATS)
    p.add_argument("--shard-size", default=None, help="bytes per shard, e.g. 512MB")
    p.add_argument("--image", default=None, choices=IMAGES)
    p.add_argument("--order", default=None, choices=ORDERS,
                   help="storage: as the images table stores them (grouped by discipline), read straight from its "
                        "files; pair_id: every shard a well-mixed sample (one shuffle of the image bytes: slower)")
    p.add_argument("--from-manifest", default=None,
                   help="an earlier export's _manifest.json: the same spec over the same table versions")


def overrides(args) -> dict:
    given = [f for f in SPEC_FLAGS if getattr(args, f) is not None]
    if args.from_manifest and given:
        flag = given[0].replace("_", "-")
        raise errors.UsageError(f"--from-manifest takes the spec from the manifest: drop --{flag}")
    return cli.flag_overrides(args, "export", SPEC_FLAGS)


def prepare(ctx) -> None:
    cli.require_out_folder(ctx.args.out)
    if ctx.args.from_manifest:
        manifest = _manifest(ctx.args.from_manifest, ctx.cfg)
        spec, versions, model = Spec.from_dict(manifest["spec"]), manifest["versions"], None
    else:
        spec, versions, model = Spec.of(ctx.cfg.export, ctx.cfg.text.boilerplate_papers), None, ctx.cfg.export.model
    spec.check(model)
    ctx.state.update(spec=spec, versions=versions, model=model)


def run(ctx):
    s = ctx.state
    return pipeline.run(ctx.spark, ctx.cfg, ctx.lake, ctx.args.out, s["spec"], model_name=s["model"],
                        versions=s["versions"])


def summary(ctx, result) -> None:
    sel = result.manifest["selection"]
    print(f"export: {result.samples} samples in {result.shards} shards ({result.written} written now), "
          f"{result.bytes / 1e6:.1f} MB, of {sel['pairs']} pairs (where {sel['where']}, score {sel['min_score']}, "
          f"text {sel['text']}, dedup {sel['dedup']}) -> {ctx.args.out} ({result.seconds:.1f}s)")


def _manifest(path: str, cfg: config.Config) -> dict:
    """An earlier export's manifest (a local file or s3://)."""
    try:
        if remote(path):
            folder, name = path.rsplit("/", 1)
            got = Store.from_uri(folder, cfg.s3).get(name)
            text = got[0] if got else None
        else:
            with open(path, "rb") as fh:
                text = fh.read()
        manifest = json.loads(text) if text is not None else None
    except (OSError, ValueError) as exc:
        raise errors.UsageError(f"--from-manifest {path} cannot be read: {exc}") from None
    if not isinstance(manifest, dict) or not {"spec", "versions"} <= set(manifest):
        raise errors.UsageError(f"--from-manifest {path} is not an export's _manifest.json")
    return manifest


if __name__ == "__main__":
    cli.job(cli.Job("export", __doc__, run, flags=flags, overrides=overrides, prepare=prepare,
                    needs=("pairs", "images"), intact=("pairs", "images", "duplicates", "clip_scores"),
                    writes=False, summary=summary))
