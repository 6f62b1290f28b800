"""Score image/caption alignment with CLIP for every pair not yet scored by the model.

    spark-submit jobs/score_clip.py --lake LAKE_ROOT_OR_S3_URI [--model ViT-B-32] [--checkpoint PATH_OR_S3_URI]

Weights come only from --checkpoint (or clip.checkpoint in conf): a local file or s3://, safetensors or
a torch state dict (read with weights_only). --random-weights-for-testing scores with random weights and
names the model so that no report can take its scores for real ones. Needs the [clip] extra.
"""

import dataclasses
import os

import _bootstrap  # noqa: F401
from s1mmalign import cli, clip, config, delta_io, errors, session


def body() -> int:
    p = cli.parser("score_clip", __doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="open_clip model name (default: clip.model in conf)")
    p.add_argument("--checkpoint", default=None, help="weights: a local file or s3://bucket/key")
    p.add_argument("--model-config", default=None,
                   help="an open_clip JSON model config, for a model that is not built in")
    p.add_argument("--random-weights-for-testing", action="store_true",
                   help="no checkpoint: random weights, and a model id that says so (tests only)")
    args = p.parse_args()
    cli.setup_logging(args.log_level)
    cfg = config.load(args.conf)
    lake = cli.lake_uri(args.lake)
    if args.model_config and not os.path.isfile(args.model_config):
        raise errors.UsageError(f"--model-config {args.model_config} is not a file")
    try:
        import open_clip  # noqa: F401
        import torch  # noqa: F401
    except ImportError as exc:
        raise errors.UsageError(f"the CLIP stack is not installed ({exc.name}): pip install -e '.[clip]'") from None
    from s1mmalign import score

    delta_io.require_tables(lake, score.NEEDED, s3=cfg.s3)
    spec = score.spec_from(cfg, args.model, args.checkpoint, args.random_weights_for_testing, args.model_config)
    mid = clip.model_id(spec)   # a missing or an unreadable checkpoint fails here, before Spark starts
    run_cfg = dataclasses.replace(cfg, spark=dataclasses.replace(
        cfg.spark, arrow_batch_rows=spec.batch_size, extra={**cfg.spark.extra, **cfg.clip.spark_extra}))
    spark = session.build(lake, run_cfg)
    try:
        result = score.run(spark, run_cfg, lake, spec, model_id=mid)
    finally:
        session.stop(spark)
    print(f"score_clip: {result.scored} pairs scored by {result.model} ({result.seconds:.1f}s)")
    return 0


if __name__ == "__main__":
    cli.main("score_clip", body)
