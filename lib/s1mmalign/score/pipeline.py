"""CLIP scoring inside Spark: pairs not yet scored by a model, joined with their thumbnails, scored in
Python workers (one model per worker, reused across batches) and MERGEd into clip_scores.

Incremental and idempotent: pairs that already have a row for this model id (name + checkpoint digest)
are not read again; a re-run, or a re-run after a crash, inserts only what is missing.
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
from s1mmalign.score import clip
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
