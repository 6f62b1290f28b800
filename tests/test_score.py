"""score_clip's pipeline in a local Spark session: every pair scored once per model, incremental,
idempotent, equal to the scorer run by hand on the stored thumbnails; and checked by validate."""

from __future__ import annotations

import dataclasses

import pytest
from delta.tables import DeltaTable

from helpers import TINY
from s1mmalign import clip, delta_io, ingest, sample, score, validate


@pytest.fixture(scope="module")
def lake(spark, cfg, tmp_path_factory):
    root = tmp_path_factory.mktemp("score") / "corpus"
    sample.generate(root, n_pairs=60, seed=5, faults=False, processes=2)
    lake = tmp_path_factory.mktemp("score-lake") / "lake"
    ingest.run(spark, cfg, str(root), str(lake))
    return lake


def rows(spark, lake):
    return {r.pair_id: r for r in delta_io.read(spark, str(lake), "clip_scores").collect()}


def test_score_every_pair_once_then_only_what_is_missing(spark, cfg, lake, tiny_checkpoint):
    tiny_cfg = dataclasses.replace(cfg, clip=dataclasses.replace(cfg.clip, batch_size=16, decode_threads=2,
                                                                     text_workers=2))
    spec = score.spec_from(tiny_cfg, "tiny-clip", str(tiny_checkpoint), model_config=TINY)
    first = score.run(spark, tiny_cfg, str(lake), spec)
    pairs = delta_io.read(spark, str(lake), "pairs").select("pair_id", "caption", "recaption", "image_sha256").collect()
    got = rows(spark, lake)
    assert first.scored == len(pairs) == len(got) > 50
    assert first.model == clip.model_id(spec) and first.statuses == {"ok": len(pairs)}
    assert {r.model for r in got.values()} == {clip.model_id(spec)} and {r.status for r in got.values()} == {"ok"}
    # equal to the scorer by hand over the stored thumbnails
    thumbs = {r.image_sha256: r.thumbnail for r in delta_io.read(spark, str(lake), "images").collect()}
    by_hand = clip.Scorer(spec).score([clip.Pair(thumbs[p.image_sha256], p.caption, p.recaption) for p in pairs[:10]])
    for p, s in zip(pairs[:10], by_hand, strict=True):
        assert got[p.pair_id].score_caption == pytest.approx(s.score_caption, abs=1e-5)
        assert got[p.pair_id].score_recaption == pytest.approx(s.score_recaption, abs=1e-5)
    # a re-run adds nothing
    assert score.run(spark, tiny_cfg, str(lake), spec).scored == 0
    assert rows(spark, lake) == got
    # pairs without a score (new ones) are scored alone; the others are untouched
    gone = sorted(got)[:5]
    DeltaTable.forPath(spark, delta_io.table_path(str(lake), "clip_scores")).delete(
        "pair_id IN ({})".format(", ".join(f"'{p}'" for p in gone)))
    assert score.run(spark, tiny_cfg, str(lake), spec).scored == 5
    again = rows(spark, lake)
    assert set(again) == set(got)
    assert all(again[p].scored_at == got[p].scored_at for p in got if p not in gone)
    assert all(again[p].scored_at > got[p].scored_at for p in gone)
    # another model is scored beside it, not instead of it
    rnd = score.spec_from(tiny_cfg, "tiny-clip", None, random_weights=True, model_config=TINY)
    assert score.run(spark, tiny_cfg, str(lake), rnd).scored == len(pairs)
    assert delta_io.read(spark, str(lake), "clip_scores").count() == 2 * len(pairs)
    # and the lake still passes every suite, clip_scores' included
    outcome = validate.run(spark, cfg, str(lake))
    assert [r.key for r in outcome.results if not r.success] == []
    assert "schema_values.clip_scores:score_caption_range" in {r.key for r in outcome.results}
