"""score_clip's pipeline in a local Spark session: every pair scored once per model, incremental,
idempotent, equal to the scorer run by hand on the stored thumbnails; and checked by validate."""

from __future__ import annotations

import dataclasses

import pytest
from delta.tables import DeltaTable

from helpers import TINY, copy_lake, held, lake_at
from s1mmalign.score import clip
from s1mmalign.score import pipeline as score
from s1mmalign.validate import pipeline as validate


@pytest.fixture(scope="module")
def lake(clean_lake, tmp_path_factory):
    return copy_lake(clean_lake, tmp_path_factory.mktemp("score-lake") / "lake")


def rows(spark, lake):
    return {r.pair_id: r for r in lake_at(str(lake)).read(spark, "clip_scores").collect()}


def test_score_every_pair_once_then_only_what_is_missing(spark, cfg, lake, tiny_checkpoint):
    tiny_cfg = dataclasses.replace(cfg, clip=dataclasses.replace(cfg.clip, batch_size=16, decode_threads=2,
                                                                     text_workers=2))
    spec = clip.ScorerSpec.of(tiny_cfg, model="tiny-clip", checkpoint=str(tiny_checkpoint), model_config=TINY)
    first = score.run(spark, tiny_cfg, held(str(lake), tiny_cfg), spec)
    pairs = lake_at(str(lake)).read(spark, "pairs").select("pair_id", "caption", "recaption", "image_sha256").collect()
    got = rows(spark, lake)
    assert first.scored == len(pairs) == len(got) > 50
    assert first.model == clip.model_id(spec) and first.statuses == {"ok": len(pairs)}
    assert {r.model for r in got.values()} == {clip.model_id(spec)} and {r.status for r in got.values()} == {"ok"}
    # equal to the scorer by hand over the stored thumbnails
    thumbs = {r.image_sha256: r.thumbnail for r in lake_at(str(lake)).read(spark, "images").collect()}
    by_hand = clip.Scorer(spec).score([clip.Pair(thumbs[p.image_sha256], p.caption, p.recaption) for p in pairs[:10]])
    for p, s in zip(pairs[:10], by_hand, strict=True):
        assert got[p.pair_id].score_caption == pytest.approx(s.score_caption, abs=1e-5)
        assert got[p.pair_id].score_recaption == pytest.approx(s.score_recaption, abs=1e-5)
    # a re-run adds nothing
    assert score.run(spark, tiny_cfg, held(str(lake), tiny_cfg), spec).scored == 0
    assert rows(spark, lake) == got
    # pairs without a score (new ones) are scored alone; the others are untouched
    gone = sorted(got)[:5]
    DeltaTable.forPath(spark, lake_at(str(lake)).path("clip_scores")).delete(
        "pair_id IN ({})".format(", ".join(f"'{p}'" for p in gone)))
    assert score.run(spark, tiny_cfg, held(str(lake), tiny_cfg), spec).scored == 5
    again = rows(spark, lake)
    assert set(again) == set(got)
    assert all(again[p].scored_at == got[p].scored_at for p in got if p not in gone)
    assert all(again[p].scored_at > got[p].scored_at for p in gone)
    # another model is scored beside it, not instead of it
    rnd = clip.ScorerSpec.of(tiny_cfg, model="tiny-clip", random_weights=True, model_config=TINY)
    assert score.run(spark, tiny_cfg, held(str(lake), tiny_cfg), rnd).scored == len(pairs)
    assert lake_at(str(lake)).read(spark, "clip_scores").count() == 2 * len(pairs)
    # and the lake still passes every suite, clip_scores' included
    outcome = validate.run(spark, cfg, held(str(lake), cfg))
    assert [r.key for r in outcome.results if not r.success] == []
    assert "schema_values.clip_scores:score_caption_range" in {r.key for r in outcome.results}


def _with_figure_types(spark, lake) -> None:
    """Give the sample's pairs a metadata.figure_type (three kinds, by pair_id), as S1-MMAlign's metadata has."""
    DeltaTable.forPath(spark, lake_at(str(lake)).path("pairs")).update(set={"metadata_json": (
        "to_json(map('figure_type', element_at(array('plot', 'diagram', ' '), "
        "CAST(pmod(conv(substr(pair_id, 1, 4), 16, 10), 3) AS INT) + 1)))")})


def test_text_signals_of_every_pair_then_only_of_changed_texts(spark, cfg, clean_lake, tmp_path):
    from s1mmalign.score import text

    lake = copy_lake(clean_lake, tmp_path / "lake")
    first = score.run_text(spark, cfg, held(str(lake), cfg))
    pairs = {r.pair_id: r for r in lake_at(str(lake)).read(spark, "pairs").collect()}
    got = {r.pair_id: r for r in lake_at(str(lake)).read(spark, "text_signals").collect()}
    assert first.computed == first.pairs == len(pairs) == len(got) > 100
    signals = text.Signals(cfg.text, cfg.report.figure_label_regex)
    for pid, p in pairs.items():             # each row is the signals of its pair's texts, under its keys
        row = got[pid].asDict()
        assert (row["discipline"], row["arxiv_id"], row["row_hash"], row["version"]) == (
            p.discipline, p.arxiv_id, p.row_hash, text.VERSION)
        assert {k: row[k] for k in text.row(signals.pair(p.caption, p.recaption))} == text.row(
            signals.pair(p.caption, p.recaption))
    assert score.run_text(spark, cfg, held(str(lake), cfg)).computed == 0
    # a caption edited in place (a new row_hash): that pair alone is computed again
    pid = sorted(pairs)[0]
    DeltaTable.forPath(spark, lake_at(str(lake)).path("pairs")).update(
        f"pair_id = '{pid}'", {"caption": "'Figure 1: the loss of the model over the course of the'",
                               "row_hash": "'edited'"})
    again = score.run_text(spark, cfg, held(str(lake), cfg))
    assert (again.computed, again.pairs) == (1, len(pairs))
    after = {r.pair_id: r for r in lake_at(str(lake)).read(spark, "text_signals").collect()}
    assert after[pid].caption_truncated and after[pid].row_hash == "edited"
    assert all(after[p] == got[p] for p in got if p != pid)


def test_fluency_scores_a_stratified_sample_incrementally(spark, cfg, clean_lake, tmp_path, tiny_mlm):
    from pyspark.sql import functions as F

    from s1mmalign.score import fluency

    lake = copy_lake(clean_lake, tmp_path / "lake")
    _with_figure_types(spark, lake)
    spec = fluency.FluencySpec.of(cfg, checkpoint=str(tiny_mlm), model="tiny-bert", per_stratum=3, batch_pairs=8)
    first = score.run_fluency(spark, cfg, held(str(lake), cfg), spec)
    strata = (lake_at(str(lake)).read(spark, "pairs")
              .select("pair_id", "discipline", F.expr(score.FIGURE_TYPE).alias("figure_type")).toPandas())
    sizes = strata.groupby(["discipline", "figure_type"]).size()
    assert set(strata.figure_type) == {"plot", "diagram", "unknown"}      # ' ' is blank: unknown
    got = lake_at(str(lake)).read(spark, "fluency_scores").toPandas()
    assert first.scored == len(got) == sum(min(3, n) for n in sizes) and first.sample == "stratified"
    assert (got.groupby(["discipline", "figure_type"]).size() == sizes.clip(upper=3)).all()
    assert set(got["sample"]) == {"stratified"} and set(got.model) == {first.model}
    assert first.statuses == {"ok": len(got)} and (got.ppl_caption > 1).all() and (got.tokens_recaption > 0).all()
    # the rows are the scorer's own, by hand
    pairs = lake_at(str(lake)).read(spark, "pairs").where(F.col("pair_id").isin(list(got.pair_id[:4]))).collect()
    by_hand = fluency.Scorer(spec).score([(p.caption, p.recaption) for p in pairs])
    mine = got.set_index("pair_id")
    for p, s in zip(pairs, by_hand, strict=True):
        assert mine.loc[p.pair_id, "pll_caption"] == pytest.approx(s.caption.pll, abs=1e-4)
        assert mine.loc[p.pair_id, "pll_recaption"] == pytest.approx(s.recaption.pll, abs=1e-4)
    # the same sample on a re-run (nothing to score), a larger one adds only its new pairs
    assert score.run_fluency(spark, cfg, held(str(lake), cfg), spec).scored == 0
    bigger = dataclasses.replace(spec, per_stratum=5)
    second = score.run_fluency(spark, cfg, held(str(lake), cfg), bigger)
    assert second.scored == sum(min(5, n) for n in sizes) - len(got)
    after = lake_at(str(lake)).read(spark, "fluency_scores").toPandas()
    assert set(got.pair_id) <= set(after.pair_id)
    kept = after.set_index("pair_id").loc[list(got.pair_id), "scored_at"]
    assert (kept.values == got.set_index("pair_id").loc[list(got.pair_id), "scored_at"].values).all()
    # the sample is the lowest pair_id hashes of each stratum
    ranked = (lake_at(str(lake)).read(spark, "pairs").select("pair_id", "discipline", F.expr(score.FIGURE_TYPE)
                                                             .alias("figure_type"), F.xxhash64("pair_id").alias("h"))
              .toPandas().sort_values(["h", "pair_id"]).groupby(["discipline", "figure_type"]).head(5))
    assert set(ranked.pair_id) == set(after.pair_id)
    # every pair with --all, as another sample of the same model
    everything = score.run_fluency(spark, cfg, held(str(lake), cfg), dataclasses.replace(spec, all=True))
    assert everything.sample == "all" and everything.scored == len(strata) - len(after)
