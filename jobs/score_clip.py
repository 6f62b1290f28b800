"""Score image/caption alignment with CLIP for every pair not yet scored by the model.

    spark-submit jobs/score_clip.py --lake LAKE_ROOT_OR_S3_URI [--model ViT-B-32] [--checkpoint PATH_OR_S3_URI]

Weights come only from --checkpoint (or clip.checkpoint in conf): a local file or s3://, safetensors or
a torch state dict (read with weights_only). --random-weights-for-testing scores with random weights and
names the model so that no report can take its scores for real ones. Needs the [clip] extra.
"""

import dataclasses
import os

import _bootstrap  # noqa: F401
from s1mmalign import cli, errors
from s1mmalign.score import clip, pipeline


def flags(p) -> None:
    p.add_argument("--model", default=None, help="open_clip model name (default: clip.model in conf)")
    p.add_argument("--checkpoint", default=None, help="weights: a local file or s3://bucket/key")
    p.add_argument("--model-config", default=None,
                   help="an open_clip JSON model config, for a model that is not built in")
    p.add_argument("--random-weights-for-testing", action="store_true",
                   help="no checkpoint: random weights, and a model id that says so (tests only)")


def prepare(ctx) -> None:
    cfg = ctx.cfg
    if cfg.clip.model_config and not os.path.isfile(cfg.clip.model_config):
        raise errors.UsageError(f"--model-config {cfg.clip.model_config} is not a file")
    try:
        import open_clip  # noqa: F401
        import torch  # noqa: F401
    except ImportError as exc:
        raise errors.UsageError(f"the CLIP stack is not installed ({exc.name}): pip install -e '.[clip]'") from None
    spec = clip.ScorerSpec.of(cfg, random_weights=ctx.args.random_weights_for_testing)
    ctx.state.update(spec=spec, model_id=clip.model_id(spec))   # a missing or unreadable checkpoint fails here
    ctx.cfg = dataclasses.replace(cfg, spark=dataclasses.replace(
        cfg.spark, arrow_batch_rows=spec.batch_size, extra={**cfg.spark.extra, **cfg.clip.spark_extra}))


def run(ctx):
    return pipeline.run(ctx.spark, ctx.cfg, ctx.lake, ctx.state["spec"], model_id=ctx.state["model_id"])


def summary(ctx, result) -> None:
    print(f"score_clip: {result.scored} pairs scored by {result.model} ({result.seconds:.1f}s)")


if __name__ == "__main__":
    cli.job(cli.Job("score_clip", __doc__, run, flags=flags, prepare=prepare, needs=pipeline.NEEDED, summary=summary,
                    overrides=lambda a: cli.flag_overrides(a, "clip", ("model", "checkpoint", "model_config"))))
