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
