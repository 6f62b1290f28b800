"""Score caption and recaption fluency with a masked language model (pseudo-perplexity).

    spark-submit jobs/score_fluency.py --lake LAKE_ROOT_OR_S3_URI --checkpoint FOLDER_OR_S3_URI
                                       [--model NAME] [--per-stratum N | --all]

The checkpoint is a Hugging Face folder (config.json, vocab.txt or tokenizer.json, *.safetensors; default
model SciBERT, allenai/scibert_scivocab_uncased), local or s3://, never fetched from a hub. By default a
stratified sample is scored: per discipline x figure_type the fluency.per_stratum pairs of lowest
pair_id hash; --all scores every pair. Incremental: pairs this checkpoint scored are not read again.
Needs the [clip] extra (torch) and transformers.
"""

import dataclasses

import _bootstrap  # noqa: F401
from s1mmalign import cli, errors
from s1mmalign.score import fluency, pipeline


def flags(p) -> None:
    p.add_argument("--checkpoint", default=None, help="a Hugging Face model folder: a local path or s3://bucket/prefix")
    p.add_argument("--model", default=None, help="the name the scores carry (default: fluency.model in conf)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--per-stratum", dest="per_stratum", type=int, default=None,
                       help="pairs per discipline x figure_type (default: fluency.per_stratum in conf)")
    group.add_argument("--all", dest="all", action="store_const", const=True, default=None,
                       help="score every pair, not the stratified sample")


def prepare(ctx) -> None:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise errors.UsageError(f"the fluency stack is not installed ({exc.name}): pip install -e '.[clip]'") from None
    spec = fluency.FluencySpec.of(ctx.cfg)
    ctx.state.update(spec=spec, model_id=fluency.model_id(spec))   # a missing or unusable checkpoint fails here
    ctx.cfg = dataclasses.replace(ctx.cfg, spark=dataclasses.replace(
        ctx.cfg.spark, arrow_batch_rows=spec.batch_pairs, extra={**ctx.cfg.spark.extra, **ctx.cfg.fluency.spark_extra}))


def run(ctx):
    return pipeline.run_fluency(ctx.spark, ctx.cfg, ctx.lake, ctx.state["spec"], model_id=ctx.state["model_id"])


def summary(ctx, result) -> None:
    print(f"score_fluency: {result.scored} pairs scored by {result.model}, sample {result.sample} "
          f"({result.seconds:.1f}s)")


if __name__ == "__main__":
    cli.job(cli.Job("score_fluency", __doc__, run, flags=flags, prepare=prepare, needs=pipeline.FLUENCY_NEEDED,
                    summary=summary, overrides=lambda a: cli.flag_overrides(
                        a, "fluency", ("checkpoint", "model", "per_stratum", "all"))))
