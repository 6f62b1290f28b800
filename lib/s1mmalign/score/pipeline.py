"""Scoring inside Spark, three jobs of one shape: the pairs a table lacks, scored in Python workers
(mapInArrow), MERGEd into the table.

- score_clip (`run`): CLIP alignment of pairs joined with their thumbnails (one model per worker) -> clip_scores.
- score_fluency (`run_fluency`): masked-LM pseudo-perplexity of a stratified sample (or every pair) ->
  fluency_scores.
- score_text (`run_text`): text signals of every pair, no model -> text_signals.

Incremental and idempotent: pairs that already have a row for this model id (name + checkpoint digest),
or for text signals a row of the same row_hash and signals version, are not read again; a re-run, or a
re-run after a crash, writes only what is missing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from s1mmalign.config import Config
from s1mmalign.lake import schemas
from s1mmalign.lake.root import Lake
from s1mmalign.score import clip, fluency, text
from s1mmalign.stages import Stage

log = logging.getLogger(__name__)

NEEDED = ("pairs", "images")


def score_task(spec: clip.ScorerSpec, model_id: str):
    """The mapInArrow function: rows (pair_id, discipline, caption, recaption, thumbnail) -> clip_scores."""
    out_schema = schemas.table("clip_scores").arrow()

    def run(batches):
        import pyarrow as pa
        import torch

        scorer = clip.scorer_for(spec)
        # On CPU every task is already one of the executor's cores: one torch thread each unless told.
        if spec.torch_threads or scorer.device.type == "cpu":
            torch.set_num_threads(spec.torch_threads or 1)
        if scorer.model_id != model_id:
            raise clip.ClipError(f"checkpoint changed under the job: {scorer.model_id} != {model_id}")
        pending = []

        def groups():
            for batch in batches:
                rows = batch.to_pylist()
                for start in range(0, len(rows), spec.batch_size):
                    chunk = rows[start:start + spec.batch_size]
                    pending.append(chunk)
                    yield [clip.Pair(r["thumbnail"], r["caption"], r["recaption"]) for r in chunk]

        for scores in scorer.score_batches(groups()):
            chunk = pending.pop(0)
            now = datetime.now(timezone.utc)
            yield pa.RecordBatch.from_pylist([
                {"pair_id": r["pair_id"], "discipline": r["discipline"], "model": model_id, "arxiv_id": r["arxiv_id"],
                 "score_caption": s.score_caption, "score_recaption": s.score_recaption,
                 "status": s.status, "scored_at": now}
                for r, s in zip(chunk, scores, strict=True)], schema=out_schema)
    return run


def unscored(spark: SparkSession, lake: Lake, model_id: str) -> DataFrame:
    """Pairs with no clip_scores row for model_id (no thumbnails yet)."""
    done = lake.read(spark, "clip_scores").where(F.col("model") == model_id).select("pair_id")
    return (lake.read(spark, "pairs").select("pair_id", "discipline", "arxiv_id", "caption", "recaption",
                                                       "image_sha256")
            .join(done, "pair_id", "left_anti"))


def with_thumbnails(spark: SparkSession, lake: Lake, todo: DataFrame) -> DataFrame:
    """todo plus each pair's thumbnail (null when its image row is gone: scored as image_unreadable)."""
    thumbs = lake.read(spark, "images").select("image_sha256", "thumbnail")
    return todo.join(thumbs, "image_sha256", "left").drop("image_sha256")


@dataclass
class ScoreSummary:
    """What one score_clip run did."""

    model: str                 # the model id the scores carry (name + checkpoint digest)
    scored: int = 0            # pairs scored (rows inserted into clip_scores)
    statuses: dict[str, int] = field(default_factory=dict)   # this model's rows by status, after the run
    seconds: float = 0.0


def run(spark: SparkSession, cfg: Config, lake: Lake, spec: clip.ScorerSpec,
        model_id: str | None = None) -> ScoreSummary:
    """Score every pair not yet scored by spec's model (stages plan and score). The caller checks that the
    NEEDED tables exist (Lake.require).

    model_id: clip.model_id(spec) when the caller has it already (it hashes the whole checkpoint).
    """
    started = time.monotonic()
    summary = ScoreSummary(model_id or clip.model_id(spec))   # reads (for s3://, downloads) the checkpoint
    lake.ensure_tables(spark, job="score_clip")
    with Stage("plan", log) as st:
        todo = unscored(spark, lake, summary.model).localCheckpoint()     # small: ids and captions, no bytes
        n = todo.count()
        st.done(n, "pairs to score", f"model {summary.model}")
    if n:
        with Stage("score", log) as st:
            # one task per default-parallelism slot: each Python worker loads the model once
            parts = max(1, min(spark.sparkContext.defaultParallelism, (n + spec.batch_size - 1) // spec.batch_size))
            scored = with_thumbnails(spark, lake, todo.repartition(parts)).mapInArrow(
                score_task(spec, summary.model), schemas.table("clip_scores").spark())
            metrics = lake.merge(spark, "clip_scores", scored)
            summary.scored = int(metrics.get("numTargetRowsInserted", 0))
            summary.statuses = {r["status"]: r["count"] for r in lake.read(spark, "clip_scores")
                                .where(F.col("model") == summary.model).groupBy("status").count().collect()}
            st.done(summary.scored, "pairs scored", "statuses for this model: "
                    + ", ".join(f"{k}={v}" for k, v in sorted(summary.statuses.items())))
    summary.seconds = time.monotonic() - started
    return summary


# -- text signals ----------------------------------------------------------------------------------------

TEXT_NEEDED = ("pairs",)


def text_task(cfg: Config):
    """The mapInArrow function: rows (pair_id, discipline, arxiv_id, row_hash, caption, recaption) -> text_signals."""
    out_schema = schemas.table("text_signals").arrow()
    conf, label = cfg.text, cfg.report.figure_label_regex

    def run(batches):
        import pyarrow as pa

        signals = text.Signals(conf, label)
        for batch in batches:
            now = datetime.now(timezone.utc)
            rows = []
            for r in batch.to_pylist():
                rows.append({"pair_id": r["pair_id"], "discipline": r["discipline"], "arxiv_id": r["arxiv_id"],
                             "row_hash": r["row_hash"], "version": text.VERSION,
                             **text.row(signals.pair(r["caption"], r["recaption"])), "computed_at": now})
            yield pa.RecordBatch.from_pylist(rows, schema=out_schema)
    return run


@dataclass
class TextSummary:
    """What one score_text run did."""

    computed: int = 0          # pairs whose signals were (re)computed
    pairs: int = 0             # rows of text_signals after the run
    seconds: float = 0.0


def run_text(spark: SparkSession, cfg: Config, lake: Lake) -> TextSummary:
    """Signals of every pair that has none of its current row_hash and signals version (stages plan, signals)."""
    started = time.monotonic()
    summary = TextSummary()
    lake.ensure_tables(spark, job="score_text")
    with Stage("plan", log) as st:
        done = (lake.read(spark, "text_signals").where(F.col("version") == text.VERSION)
                .select("pair_id", "row_hash"))
        todo = (lake.read(spark, "pairs").select("pair_id", "discipline", "arxiv_id", "row_hash", "caption",
                                                  "recaption")
                .join(done, ["pair_id", "row_hash"], "left_anti")).localCheckpoint()
        n = todo.count()
        st.done(n, "pairs to compute", f"signals version {text.VERSION}")
    if n:
        with Stage("signals", log) as st:
            parts = max(1, min(spark.sparkContext.defaultParallelism * 4, n // 2000 + 1))
            out = todo.repartition(parts).mapInArrow(text_task(cfg), schemas.table("text_signals").spark())
            metrics = lake.merge(spark, "text_signals", out,
                                 update_when="t.row_hash <> s.row_hash OR t.version <> s.version")
            summary.computed = int(metrics.get("numTargetRowsInserted", 0)) + int(
                metrics.get("numTargetRowsUpdated", 0))
            st.done(summary.computed, "pairs computed")
    summary.pairs = lake.read(spark, "text_signals").count()
    summary.seconds = time.monotonic() - started
    return summary


# -- fluency -----------------------------------------------------------------------------------------------

FLUENCY_NEEDED = ("pairs",)
FIGURE_TYPE = schemas.FIGURE_TYPE_SQL


def fluency_task(spec: fluency.FluencySpec, model_id: str):
    """The mapInArrow function: rows (pair_id, discipline, arxiv_id, figure_type, sample, caption, recaption)
    -> fluency_scores."""
    out_schema = schemas.table("fluency_scores").arrow()

    def run(batches):
        import pyarrow as pa
        import torch

        scorer = fluency.scorer_for(spec)
        if spec.torch_threads or scorer.device.type == "cpu":
            torch.set_num_threads(spec.torch_threads or 1)
        if scorer.model_id != model_id:
            raise fluency.FluencyError(f"checkpoint changed under the job: {scorer.model_id} != {model_id}")
        for batch in batches:
            rows = batch.to_pylist()
            for start in range(0, len(rows), spec.batch_pairs):
                chunk = rows[start:start + spec.batch_pairs]
                scores = scorer.score([(r["caption"], r["recaption"]) for r in chunk])
                now = datetime.now(timezone.utc)
                yield pa.RecordBatch.from_pylist([
                    {"pair_id": r["pair_id"], "discipline": r["discipline"], "model": model_id,
                     "arxiv_id": r["arxiv_id"], "figure_type": r["figure_type"], "sample": r["sample"],
                     "pll_caption": s.caption.pll, "tokens_caption": s.caption.tokens, "ppl_caption": s.caption.ppl,
                     "pll_recaption": s.recaption.pll, "tokens_recaption": s.recaption.tokens,
                     "ppl_recaption": s.recaption.ppl, "status": s.status, "scored_at": now}
                    for r, s in zip(chunk, scores, strict=True)], schema=out_schema)
    return run


def fluency_sample(spark: SparkSession, lake: Lake, per_stratum: int | None) -> DataFrame:
    """The pairs to score: per discipline x figure_type the per_stratum pairs of lowest xxhash64(pair_id)
    (ties by pair_id; the same pairs on every run of the same lake), or every pair (per_stratum None)."""
    from pyspark.sql import Window

    pairs = (lake.read(spark, "pairs")
             .select("pair_id", "discipline", "arxiv_id", F.expr(FIGURE_TYPE).alias("figure_type"), "caption",
                     "recaption"))
    if per_stratum is None:
        return pairs.withColumn("sample", F.lit("all"))
    rank = F.row_number().over(Window.partitionBy("discipline", "figure_type")
                               .orderBy(F.xxhash64("pair_id"), "pair_id"))
    return (pairs.withColumn("_rank", rank).where(F.col("_rank") <= per_stratum).drop("_rank")
            .withColumn("sample", F.lit("stratified")))


@dataclass
class FluencySummary:
    """What one score_fluency run did."""

    model: str
    sample: str                # stratified or all
    scored: int = 0
    statuses: dict[str, int] = field(default_factory=dict)   # this model's rows by status, after the run
    seconds: float = 0.0


def run_fluency(spark: SparkSession, cfg: Config, lake: Lake, spec: fluency.FluencySpec,
                model_id: str | None = None) -> FluencySummary:
    """Score the sample's pairs (or every pair with spec.all) not yet scored by spec's model."""
    started = time.monotonic()
    summary = FluencySummary(model_id or fluency.model_id(spec), "all" if spec.all else "stratified")
    lake.ensure_tables(spark, job="score_fluency")
    with Stage("plan", log) as st:
        done = lake.read(spark, "fluency_scores").where(F.col("model") == summary.model).select("pair_id")
        todo = (fluency_sample(spark, lake, None if spec.all else spec.per_stratum)
                .join(done, "pair_id", "left_anti")).localCheckpoint()
        n = todo.count()
        st.done(n, "pairs to score", f"model {summary.model}, sample {summary.sample}"
                + ("" if spec.all else f" ({spec.per_stratum} per discipline x figure_type)"))
    if n:
        with Stage("score", log) as st:
            parts = max(1, min(spark.sparkContext.defaultParallelism, (n + spec.batch_pairs - 1) // spec.batch_pairs))
            # within a task, pairs of similar length together: the masked copies pad less
            ordered = (todo.repartition(parts, "pair_id")
                       .sortWithinPartitions(F.coalesce(F.length("caption"), F.lit(0))
                                             + F.coalesce(F.length("recaption"), F.lit(0))))
            scored = ordered.mapInArrow(fluency_task(spec, summary.model), schemas.table("fluency_scores").spark())
            metrics = lake.merge(spark, "fluency_scores", scored)
            summary.scored = int(metrics.get("numTargetRowsInserted", 0))
            summary.statuses = {r["status"]: r["count"] for r in lake.read(spark, "fluency_scores")
                                .where(F.col("model") == summary.model).groupBy("status").count().collect()}
            st.done(summary.scored, "pairs scored", "statuses for this model: "
                    + ", ".join(f"{k}={v}" for k, v in sorted(summary.statuses.items())))
    summary.seconds = time.monotonic() - started
    return summary
