"""Duplicates: exact groups by image bytes, near-duplicate clusters by banded perceptual-hash match."""

import dataclasses
import random

import pytest

from s1mmalign.config import QualityConf
from s1mmalign.validate import dedup

PAIRS_SCHEMA = "pair_id string, source string, discipline string, image_path string, image_sha256 string, " \
               "image_dhash bigint"


def signed(h: int) -> int:
    return h - (1 << 64) if h >= 1 << 63 else h


def flip(h: int, *bits: int) -> int:
    for b in bits:
        h ^= 1 << b
    return h


def frames(spark, images: dict[str, int], pairs: list[tuple[str, str]]):
    """images: sha -> dhash (unsigned); pairs: (pair_id, sha)."""
    img_df = spark.createDataFrame([(s, signed(h)) for s, h in images.items()],
                                   "image_sha256 string, image_dhash bigint")
    pair_df = spark.createDataFrame([(p, "arxiv", "physics", f"images/2401/{p}.tar.gz/fig001.png", s,
                                      signed(images[s])) for p, s in pairs], PAIRS_SCHEMA)
    return pair_df, img_df


def test_bands_cover_all_64_bits_once():
    for bands in (1, 3, 4, 5, 7, 8):
        seen = 0
        for shift, mask in dedup._bands(bands):
            part = mask << shift
            assert seen & part == 0
            seen |= part
        assert seen == (1 << 64) - 1


def test_union_find_joins_chains():
    assert sorted(dedup._union_find([(5, 3), (3, 9), (20, 21)])) == [(3, 3), (5, 3), (9, 3), (20, 20), (21, 20)]


def test_exact_groups_count_distinct_pairs(spark):
    pairs, _ = frames(spark, {"a": 1, "b": 2, "c": 3},
                      [("p1", "a"), ("p2", "a"), ("p3", "b"), ("p3", "b"), ("p4", "c")])
    got = {(r.group_id, r.pair_id, r.group_pairs) for r in dedup.exact_groups(pairs).collect()}
    # p3 twice is one pair (a doubled row), not bytes shared by two pairs
    assert got == {("a", "p1", 2), ("a", "p2", 2)}


@pytest.mark.parametrize("driver_edges", [1_000_000, 0], ids=["union-find", "spark-rounds"])
def test_near_clusters_find_every_match_within_k_and_no_other(spark, driver_edges):
    rng = random.Random(5)
    base = [rng.getrandbits(64) for _ in range(6)]
    images = {f"s{i}": h for i, h in enumerate(base)}
    # s0 ~ n0 (2 bits, in different bands), n0 ~ n1 (2 bits): a chain; s0 and n1 are 4 apart yet one cluster
    images["n0"] = flip(base[0], 0, 63)
    images["n1"] = flip(images["n0"], 30, 31)
    images["same"] = base[1]            # another image with the very same hash
    images["far"] = flip(base[2], 1, 2, 3)   # 3 bits: over k=2
    pairs = [(f"p_{s}", s) for s in images] + [("p_extra", "n0")]
    pair_df, img_df = frames(spark, images, pairs)
    params = QualityConf(near_duplicate_distance=2, lsh_bands=3, max_bucket=5000, max_cluster_rounds=10,
                         driver_cluster_edges=driver_edges)
    rows, stats = dedup.find(pair_df, img_df, params)
    near = {(r.group_id, r.pair_id, r.group_pairs, r.group_images, r.distance)
            for r in rows.collect() if r.group_kind == "near"}
    g1 = min("s0", "n0", "n1")
    d = lambda a, b: bin(images[a] ^ images[b]).count("1")  # noqa: E731
    assert near == {
        (g1, "p_s0", 4, 3, d("s0", g1)), (g1, "p_n0", 4, 3, d("n0", g1)), (g1, "p_extra", 4, 3, d("n0", g1)),
        (g1, "p_n1", 4, 3, d("n1", g1)),
        ("s1", "p_s1", 2, 2, 0), ("s1", "p_same", 2, 2, 0),
    }
    # p_n0 and p_extra share n0's bytes: an exact group too
    assert {(r.group_id, r.pair_id) for r in rows.collect() if r.group_kind == "exact"} == {
        ("n0", "p_n0"), ("n0", "p_extra")}
    assert stats.matches == 2 and stats.near_clusters == 2 and stats.exact_groups == 1
    if driver_edges == 0:
        assert stats.rounds >= 1


def test_oversized_buckets_are_skipped_and_counted(spark):
    # 40 hashes that agree on band 0 (low 22 bits) and differ elsewhere by many bits
    rng = random.Random(9)
    images = {f"s{i}": (rng.getrandbits(42) << 22) | 0x2AAAA for i in range(40)}
    pair_df, img_df = frames(spark, images, [(f"p{i}", s) for i, s in enumerate(images)])
    stats = dedup.DedupStats()
    small = QualityConf(near_duplicate_distance=2, lsh_bands=3, max_bucket=10, max_cluster_rounds=5)
    dedup.near_matches(img_df, small, stats)
    assert stats.skipped_buckets == 1 and stats.candidate_pairs == 0
    stats = dedup.DedupStats()
    dedup.near_matches(img_df, dataclasses.replace(small, max_bucket=100), stats)
    assert stats.skipped_buckets == 0 and stats.candidate_pairs == 40 * 39 // 2


def _brute(hashes: set[int], k: int) -> set[tuple[int, int, int]]:
    """Every pair of distinct hashes (signed, h1 < h2) within k bits, with the distance: all pairs compared."""
    hs = sorted(signed(h) for h in hashes)
    return {(a, b, bin((a ^ b) & (1 << 64) - 1).count("1")) for i, a in enumerate(hs) for b in hs[i + 1:]
            if bin((a ^ b) & (1 << 64) - 1).count("1") <= k}


def test_near_matches_kept_from_run_to_run_equal_a_search_over_every_hash(spark, cfg, tmp_path, monkeypatch):
    """validate's near matches across runs: the first run bands every hash; later ones only the new hashes,
    against the stored band keys; after each the stored matches are exactly all pairs within k (brute
    force), including pairs of a new hash with an old one and chains across runs. A run cut between its
    two writes converges; changed settings, a hash gone and a bucket grown past max_bucket search anew."""
    from helpers import held
    from s1mmalign.validate import pipeline

    lake = held(str(tmp_path / "lake"), cfg)
    lake.ensure_tables(spark, job="validate")
    # new hashes matched on the driver (dedup.new_matches_local); Spark's new_matches, the path past
    # driver_cluster_edges, equals it (test_new_hashes_matched_on_the_driver_as_spark_matches_them) and runs in
    # the pipeline in test_a_bucket_grown_past_max_bucket_is_searched_anew[in Spark]
    params = QualityConf(near_duplicate_distance=3, lsh_bands=4, max_bucket=5000, max_cluster_rounds=10)
    rng = random.Random(31)
    bases = [rng.getrandbits(64) for _ in range(30)]
    variants = [flip(b, *rng.sample(range(64), rng.choice([1, 2, 3, 4]))) for _ in range(3) for b in bases]
    batches = [set(bases[:15]) | set(variants[:30]), set(bases[15:]) | set(variants[30:60]), set(variants[60:])]

    def run(hashes, p=params):
        stats = dedup.DedupStats()
        img = spark.createDataFrame([(f"sha{h}", signed(h)) for h in hashes], "image_sha256 string, image_dhash bigint")
        how, added = pipeline._near_matches(spark, p, lake, img, stats, full=False)
        assert added is (how != "incremental (0 new hashes)")       # whether duplicates must be built anew
        got = {(r.h1, r.h2, r.d) for r in lake.read(spark, "dhash_edges").collect()}
        bands = lake.read(spark, "dhash_bands")
        assert bands.count() == p.lsh_bands * len(hashes) == bands.select("h", "band").distinct().count()
        return how, got

    seen: set[int] = set()
    for i, batch in enumerate(batches):
        seen |= batch
        if i == 1:      # the run is cut after its matches are written, before the band keys
            real = lake.append
            monkeypatch.setattr(lake, "append", lambda *a: (_ for _ in ()).throw(RuntimeError("killed")))
            with pytest.raises(RuntimeError):
                run(seen)
            monkeypatch.setattr(lake, "append", real)
        how, got = run(seen)
        assert how == ("in full (no stored band keys)" if i == 0 else f"incremental ({len(batch)} new hashes)")
        want = _brute(seen, 3)
        assert got == want and len(want) >= 10
    assert any(a in {signed(h) for h in batches[0]} and b in {signed(h) for h in batches[2]} or
               b in {signed(h) for h in batches[0]} and a in {signed(h) for h in batches[2]}
               for a, b, _ in got), "no match between the first run's hashes and the last run's"
    edges = lake.version("dhash_edges")
    assert run(seen) == ("incremental (0 new hashes)", _brute(seen, 3)) and lake.version("dhash_edges") == edges

    k2 = dataclasses.replace(params, near_duplicate_distance=2)
    assert run(seen, k2) == ("in full (settings changed)", _brute(seen, 2))
    for changed in (dataclasses.replace(k2, lsh_bands=5), dataclasses.replace(k2, lsh_bands=5, max_bucket=4000)):
        assert run(seen, changed) == ("in full (settings changed)", _brute(seen, 2))
    gone = set(list(seen)[1:])
    assert run(gone, dataclasses.replace(k2, lsh_bands=5, max_bucket=4000)) == (
        "in full (1 stored hash(es) no longer in images)", _brute(gone, 2))


@pytest.mark.parametrize("driver", [1_000_000, 0], ids=["new hashes matched on the driver", "in Spark"])
def test_a_bucket_grown_past_max_bucket_is_searched_anew(spark, cfg, tmp_path, driver):
    """A full search skips a bucket over max_bucket, and with it the matches it gave while smaller: a run
    whose new hashes push a bucket past the limit searches every hash anew, as a full run would."""
    from helpers import held
    from s1mmalign.validate import pipeline

    lake = held(str(tmp_path / "lake"), cfg)
    lake.ensure_tables(spark, job="validate")
    params = QualityConf(near_duplicate_distance=2, lsh_bands=3, max_bucket=4, max_cluster_rounds=5,
                         driver_cluster_edges=driver)
    low = 0x2AAAA | (0x155 << 22)      # every hash agrees on bands 0 and 1 (the low 43 bits)
    first = {low | (0b1 << 45), low | (0b11 << 45), low | (0b111 << 55)}     # 1 bit apart: one match
    fourth, fifth = low | (0b111 << 49), low | (0b11111 << 58)              # 4 or more bits from any other
    def run(hashes):
        stats = dedup.DedupStats()
        img = spark.createDataFrame([(f"sha{h}", signed(h)) for h in hashes], "image_sha256 string, image_dhash bigint")
        how, _ = pipeline._near_matches(spark, params, lake, img, stats, full=False)
        return how, {(r.h1, r.h2) for r in lake.read(spark, "dhash_edges").collect()}, stats

    how, got, _ = run(first)
    assert got == {(low | (0b1 << 45), low | (0b11 << 45))}
    how, got, stats = run(first | {fourth})          # 4 in each shared bucket: still compared
    assert how == "incremental (1 new hashes)" and len(got) == 1 and stats.skipped_buckets == 0
    how, got, stats = run(first | {fourth, fifth})   # 5: both buckets the match shared are skipped
    assert how == "in full (a bucket grew past quality.max_bucket)" and got == set() and stats.skipped_buckets == 2


def test_new_hashes_are_read_from_the_files_images_gained_since_the_version_banded(spark, cfg, tmp_path, caplog):
    """Once the band keys hold every hash of a version of images (validate_state), a run reads the hashes of
    the files the log added after it, not every row: the stored matches still equal all pairs within k
    (brute force), a hash already stored under another image adds none, and where rows may have gone (an
    OPTIMIZE removed files) every hash is compared again."""
    import logging
    from datetime import datetime, timezone

    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    from helpers import held
    from s1mmalign.lake import schemas
    from s1mmalign.validate import pipeline

    lake = held(str(tmp_path / "lake"), cfg)
    lake.ensure_tables(spark, job="ingest")
    lake.ensure_tables(spark, job="validate")
    params = QualityConf(near_duplicate_distance=3, lsh_bands=4, max_bucket=5000, max_cluster_rounds=10)
    rng = random.Random(7)
    bases = [rng.getrandbits(64) for _ in range(24)]
    near = [flip(b, *rng.sample(range(64), rng.choice([1, 2, 3]))) for b in bases]
    tdef = schemas.table("images")

    def append(hashes, tag):       # one commit, one file per call (one partition)
        rows = [{c.name: None for c in tdef.columns} | {
            "image_sha256": f"{tag}-{i}", "discipline": "physics", "format": "PNG", "width": 8, "height": 8,
            "image_bytes": 1, "image_dhash": signed(h), "content": b"x", "thumbnail": b"x", "thumbnail_width": 8,
            "thumbnail_height": 8, "first_source": "arxiv", "first_image_path": f"images/{tag}-{i}.png",
            "ingest_run_id": tag, "ingested_at": datetime.now(timezone.utc)} for i, h in enumerate(sorted(hashes))]
        (spark.createDataFrame([tuple(r[c] for c in tdef.names) for r in rows], tdef.spark()).coalesce(1)
         .write.format("delta").mode("append").save(lake.path("images")))

    def run():
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="s1mmalign.validate.pipeline"):
            state, version = pipeline._states(spark, lake), lake.version("images")
            added = pipeline._ImagesAdded(spark, lake, version).since(state.get("dhash_bands", {}).get("images"))
            how, _ = pipeline._near_matches(spark, params, lake, lake.read(spark, "images"), dedup.DedupStats(),
                                            False, added)
            pipeline._record_states(spark, lake, state, {"dhash_bands": {"images": version}},
                                    ("run", datetime.now(timezone.utc)))
        hashes = {r.image_dhash % (1 << 64) for r in lake.read(spark, "images").select("image_dhash").collect()}
        got = {(r.h1, r.h2, r.d) for r in lake.read(spark, "dhash_edges").collect()}
        assert got == _brute(hashes, 3), how
        return how, caplog.text

    append(bases[:12] + near[:12], "a")
    assert run()[0] == "in full (no stored band keys)"
    append(bases[12:18] + near[12:18], "b")
    append(bases[18:] + near[18:], "c")
    how, text = run()
    assert how == "incremental (24 new hashes)" and "2 file(s) added to images since version" in text
    append([bases[0], near[5]], "d")                    # other images, hashes stored already: nothing new
    how, text = run()
    assert how == "incremental (0 new hashes)" and "1 file(s) added to images since version" in text
    how, text = run()
    assert how == "incremental (0 new hashes)" and "images unchanged" in text
    DeltaTable.forPath(spark, lake.path("images")).optimize().executeCompaction()
    append([flip(bases[3], 1, 2)], "e")
    how, text = run()
    assert how == "incremental (1 new hashes)" and "removed since version" in text
    assert lake.read(spark, "dhash_bands").where(F.col("band") == 0).count() == len(set(bases + near)) + 1


def test_groups_a_change_touches_recomputed_alone_equal_a_build_over_everything(spark):
    """Stored rows, less the rows in the scope of what changed, plus touched()'s rows equal find() over the
    changed tables, step after step: a pair joins an exact group, two clusters merge through a new image,
    an image arrives with a hash already stored (distance 0), a pair moves to other bytes (its old group left
    with one pair: gone), a clustered pair deleted, another's path changed. Both ways of forming the groups:
    on the driver (a small change) and Spark's plan (past driver_rows)."""
    from pyspark.sql import functions as F

    rng = random.Random(11)
    base = [rng.getrandbits(64) for _ in range(8)]
    imgs = {f"s{i}": h for i, h in enumerate(base)}
    imgs |= {"a1": flip(base[0], 0, 40), "b1": flip(base[1], 5, 50),           # clusters s0~a1, s1~b1, c0~c1;
             "c0": flip(base[0], 10, 11, 12, 13, 14)}                             # c0 5 bits from s0
    imgs["c1"] = flip(imgs["c0"], 20)
    pairs = {f"p_{s}": (s, f"images/x/{s}.png") for s in imgs} | {"p_dup": ("s2", "images/x/dup.png")}
    params = QualityConf(near_duplicate_distance=3, lsh_bands=4, max_bucket=5000, max_cluster_rounds=10)
    cols = dedup.PAIR_COLUMNS

    def tables(imgs, pairs):
        p = spark.createDataFrame([(pid, "src", "physics", path, sha, signed(imgs[sha]))
                                   for pid, (sha, path) in sorted(pairs.items())], PAIRS_SCHEMA)
        i = spark.createDataFrame([(s, signed(h)) for s, h in sorted(imgs.items())],
                                  "image_sha256 string, image_dhash bigint")
        return p, i

    def rows(df):
        return sorted(tuple(r) for r in df.select(*cols, "group_id", "group_pairs", "group_images", "distance",
                                                  "group_kind").collect())

    p0, i0 = tables(imgs, pairs)
    stored, _ = dedup.find(p0, i0, params)
    before = (imgs, {(pid, *v) for pid, v in pairs.items()})
    steps = [      # (images added, pairs after)
        lambda pa: ({"m": flip(imgs["a1"], 2, 3), "z": base[4],           # m joins s0~a1; z: s4's very hash;
                     "sgn": flip(base[5], 0, 63)},                           # sgn: s5 with the sign bit flipped
                    pa | {"p_dup2": ("s2", "images/x/dup2.png"), "p_m": ("m", "images/x/m.png"),
                          "p_z": ("z", "images/x/z.png"), "p_sgn": ("sgn", "images/x/sgn.png")}),
        lambda pa: ({"bridge": flip(base[0], 10, 11, 12)},                  # 3 bits from s0, 2 from c0: one cluster
                    pa | {"p_bridge": ("bridge", "images/x/br.png")}),
        lambda pa: ({}, {**{k: v for k, v in pa.items() if k not in ("p_dup", "p_a1")},     # a1: an image alone
                         "p_dup2": ("s3", "images/x/dup2.png"), "p_b1": ("b1", "images/x/b1-moved.png")}),
    ]
    for n, step in enumerate(steps):
        new_imgs, pairs = step(dict((pid, (sha, path)) for pid, sha, path in before[1]))
        imgs = before[0] | new_imgs
        now_rows = {(pid, *v) for pid, v in pairs.items()}
        shas = {sha for _, sha, _ in before[1] ^ now_rows} | set(new_imgs)
        hashes = {signed(imgs[sha]) for sha in shas}
        p1, i1 = tables(imgs, pairs)
        matches = dedup.near_matches(i1, params, dedup.DedupStats())
        want, _ = dedup.find(p1, i1, params)
        for driver_rows in (None, 0):
            got = dedup.touched(p1, i1, params, matches, shas, hashes, dedup.DedupStats(), driver_rows)
            assert got is not None
            new, scope_shas, scope_hashes = got
            replaced = dedup.in_scope(stored, scope_shas, scope_hashes)
            updated = stored.join(replaced.select("group_kind", "group_id", "pair_id"),
                                  ["group_kind", "group_id", "pair_id"], "left_anti").unionByName(new)
            assert rows(updated) == rows(want), (n, driver_rows)
        assert rows(want) != rows(stored), n                                # every step changes some group
        assert scope_hashes.count() < len(set(imgs.values())), n            # and not every image is looked at
        stored = want.withColumn("distance", F.col("distance").cast("int"))
        before = (imgs, now_rows)
    merged = {r.group_id for r in stored.where("group_kind = 'near'").collect() if r.image_sha256 in ("c1", "a1")}
    assert len(merged) == 1 and stored.where("group_kind = 'exact'").select("group_id").distinct().count() == 1


def test_new_hashes_matched_on_the_driver_as_spark_matches_them(spark):
    """dedup.new_matches_local against dedup.new_matches on crowded buckets around max_bucket: the same
    matches, candidate count and skipped buckets, and "crossed" exactly where Spark's says a bucket grew
    past the limit (None). Hashes differ in a few bits spread over the bands, so buckets fill up."""
    rng = random.Random(23)
    spots = [1, 9, 22, 30, 44, 52, 61, 63]          # 2-3 positions in each of 3 bands of ~21 bits
    base = rng.getrandbits(64)
    crossed = 0
    for trial in range(10):
        params = QualityConf(near_duplicate_distance=2, lsh_bands=3, max_bucket=rng.choice([2, 3, 4, 6]))
        pool = sorted({signed(flip(base, *rng.sample(spots, rng.randint(0, 3)))) for _ in range(14)})
        old, new = pool[:len(pool) // 2], pool[len(pool) // 2:]
        stored = dedup.banded(spark.createDataFrame([(h,) for h in old], "image_dhash bigint"), params)
        stored = stored.localCheckpoint()
        want_stats, got_stats = dedup.DedupStats(), dedup.DedupStats()
        want = dedup.new_matches(stored, dedup.banded(spark.createDataFrame([(h,) for h in new], "image_dhash bigint"),
                                                      params), params, want_stats)
        what, fresh, got, rows = dedup.new_matches_local(stored, old[:2] + new, params, got_stats, 10_000)
        assert fresh == new, trial                            # the stored ones it was given are known
        if want is None:
            assert what == "crossed", trial
            crossed += 1
            continue
        assert what == "ok" and sorted(r[0] for r in rows[::3]) == new and len(rows) == 3 * len(new), trial
        assert sorted(tuple(r) for r in want.select("h1", "h2", "d").collect()) == got, trial
        assert (got_stats.candidate_pairs, got_stats.matches, got_stats.skipped_buckets) == (
            want_stats.candidate_pairs, want_stats.matches, want_stats.skipped_buckets), trial
    assert 0 < crossed < 10                                  # both outcomes were compared
    assert dedup.new_matches_local(stored, new, params, dedup.DedupStats(), 1)[0] == "big"
