"""Export training shards (WebDataset tar or Parquet) from one consistent snapshot of the lake.

    spark-submit jobs/export.py --lake LAKE --out DIR_OR_S3 [--where SQL] [--dedup none|exact|near]
        [--model MODEL --min-score X --score-field caption|recaption] [--text recaption|caption|both]
        [--format webdataset|parquet] [--shard-size 512MB] [--image original|thumbnail] [--order storage|pair_id]
    spark-submit jobs/export.py --lake LAKE --out DIR_OR_S3 --from-manifest OLD_OUT/_manifest.json

--where is a Spark SQL condition over the pairs' columns (and score_caption, score_recaption, score_status
of --model's scores). --from-manifest exports exactly what an earlier export did: its spec, over the table
versions it read (Delta time travel), shard for shard byte-identical. Re-running over an unfinished --out
resumes it: complete shards are kept, the rest written.
"""

import json

import _bootstrap  # noqa: F401
from s1mmalign import cli, config, delta_io, errors, export, session
from s1mmalign.storage import Store, remote


def body() -> int:
    p = cli.parser("export", __doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder or s3://bucket/prefix for the shards and _manifest.json")
    p.add_argument("--where", default=None, help="Spark SQL condition over pairs (and the model's scores)")
    p.add_argument("--dedup", default=None, choices=export.DEDUP,
                   help="exact: one pair per exact image group; near: one per near-duplicate cluster too "
                        "(default none)")
    p.add_argument("--model", default=None, help="a clip_scores model (name or id): its scores in each sample")
    p.add_argument("--min-score", type=float, default=None, help="keep pairs whose --model score is at least this")
    p.add_argument("--score-field", default=None, choices=export.SCORE_FIELDS,
                   help="the score --min-score compares (default: that of --text; caption for both)")
    p.add_argument("--text", default=None, choices=export.TEXTS, help="the text of each sample (default recaption)")
    p.add_argument("--format", default=None, choices=export.FORMATS, help="default webdataset")
    p.add_argument("--shard-size", default=None, help="bytes per shard, e.g. 512MB (default: export.shard_size)")
    p.add_argument("--image", default=None, choices=export.IMAGES, help="default original")
    p.add_argument("--order", default=None, choices=export.ORDERS,
                   help="storage (default): as the images table stores them (grouped by discipline), read straight "
                        "from its files; pair_id: every shard a well-mixed sample (one shuffle of the image bytes: "
                        "slower)")
    p.add_argument("--from-manifest", default=None,
                   help="an earlier export's _manifest.json: the same spec over the same table versions")
    args = p.parse_args()
    cli.setup_logging(args.log_level)
    cfg = config.load(args.conf)
    lake = cli.lake_uri(args.lake)
    out = cli.require_out_folder(args.out)
    versions, model_name = None, args.model
    if args.from_manifest:
        given = [f for f in ("where", "dedup", "model", "min_score", "score_field", "text", "format", "shard_size",
                             "image", "order") if getattr(args, f) is not None]
        if given:
            flag = given[0].replace("_", "-")
            raise errors.UsageError(f"--from-manifest takes the spec from the manifest: drop --{flag}")
        manifest = _manifest(args.from_manifest, cfg)
        spec, versions, model_name = export.Spec.from_dict(manifest["spec"]), manifest["versions"], None
    else:
        text = args.text or "recaption"
        field = args.score_field or ("recaption" if text == "recaption" else "caption")
        spec = export.Spec(where=args.where, dedup=args.dedup or "none", min_score=args.min_score, score_field=field,
                           text=text, format=args.format or "webdataset", image=args.image or "original",
                           order=args.order or "storage",
                           shard_bytes=export.parse_size(args.shard_size or cfg.export.shard_size))
    spec.check(model_name)
    delta_io.require_tables(lake, ("pairs", "images"), s3=cfg.s3)
    delta_io.require_intact(lake, ("pairs", "images", "duplicates", "clip_scores"), s3=cfg.s3)
    spark = session.build(lake, cfg, write=False)
    try:
        result = export.run(spark, cfg, lake, out, spec, model_name=model_name, versions=versions)
    finally:
        session.stop(spark)
    sel = result.manifest["selection"]
    print(f"export: {result.samples} samples in {result.shards} shards ({result.written} written now), "
          f"{result.bytes / 1e6:.1f} MB, of {sel['pairs']} pairs (where {sel['where']}, score {sel['min_score']}, "
          f"text {sel['text']}, dedup {sel['dedup']}) -> {out} ({result.seconds:.1f}s)")
    return 0


def _manifest(path: str, cfg) -> dict:
    """An earlier export's manifest (a local file or s3://)."""
    try:
        if remote(path):
            folder, name = path.rsplit("/", 1)
            got = Store.from_uri(folder, cfg.s3.endpoint_url, cfg.s3.region).get(name)
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
    cli.main("export", body)
