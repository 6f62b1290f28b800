"""jobs/export.py: training shards read back by real consumers (webdataset, pyarrow, HF datasets), filters,
dedup and score thresholds on a lake with planted duplicates and known scores, determinism and time travel,
resume after kill -9, one-line refusals, and an export from an S3 lake to S3."""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import time
import zlib
from pathlib import Path

import pytest

from helpers import BIN, REPO, free_port, held, lake_at  # noqa: F401
from s1mmalign.config import S3Conf
from s1mmalign.export import manifest, select
from s1mmalign.export import pipeline as export
from s1mmalign.ingest import pipeline as ingest
from s1mmalign.ingest import sample
from s1mmalign.lake import session
from s1mmalign.lake.storage import LocalStore, S3Store
from s1mmalign.validate import dedup

MODEL = "planted@sha256:00000000feedface"
SHARD = 150_000


def known_score(pair_id: str) -> float:
    return (int(pair_id[:6], 16) % 1000) / 1000


def _png_variant(blob: bytes, k: int) -> bytes:
    """The same pixels (the same perceptual hash), other bytes: a tEXt chunk after the header."""
    assert blob[:8] == b"\x89PNG\r\n\x1a\n"
    data = b"Comment\x00copy " + str(k).encode()
    chunk = struct.pack(">I", len(data)) + b"tEXt" + data + struct.pack(">I", zlib.crc32(b"tEXt" + data))
    return blob[:33] + chunk + blob[33:]


def plant(root: Path) -> dict[str, list[str]]:
    """Duplicates in the biorxiv tree: an image copied twice (an exact group of 3), an image re-encoded
    (a near cluster of 2), an image copied once and re-encoded once (both). Returns image_path groups."""
    jsonl = sorted((root / "biorxiv" / "jsonl").glob("*.jsonl"))
    recs = [json.loads(line) for f in jsonl for line in f.read_text().splitlines() if line.strip()]
    pngs = [r for r in recs if r["image_path"].endswith(".png")]
    assert len(pngs) >= 3, "the sample corpus has too few biorxiv PNGs to plant duplicates in"
    lines, groups = [], {"exact": [], "near": [], "both": []}

    def add(rec, k, blob, group):
        path = f"images/10.1101_2099.{900 + k:06d}/fig{k}.png"
        (root / "biorxiv" / path).parent.mkdir(parents=True, exist_ok=True)
        (root / "biorxiv" / path).write_bytes(blob)
        meta = dict(rec.get("metadata") or {}, doi=f"10.1101/2099.{900 + k:06d}")
        lines.append(json.dumps({**rec, "image_path": path, "metadata": meta}))
        groups[group].append(path)

    for group, rec, kinds in (("exact", pngs[0], "cc"), ("near", pngs[1], "v"), ("both", pngs[2], "cv")):
        blob = (root / "biorxiv" / rec["image_path"]).read_bytes()
        groups[group].append(rec["image_path"])
        for kind in kinds:
            k = len(lines)
            add(rec, k, blob if kind == "c" else _png_variant(blob, k), group)
    (root / "biorxiv" / "jsonl" / "biorxiv_2099.jsonl").write_text("\n".join(lines) + "\n")
    return groups


@pytest.fixture(scope="module")
def lake(spark, cfg, tmp_path_factory):
    """A lake of the sample corpus with planted duplicates (the duplicates table computed by validate's
    code) and clip_scores of a planted model with known scores."""
    from pyspark.sql import functions as F

    root = tmp_path_factory.mktemp("export") / "corpus"
    sample.generate(root, n_pairs=80, seed=23, faults=False, processes=2)
    groups = plant(root)
    lake = str(tmp_path_factory.mktemp("export-lake") / "lake")
    tcfg = dataclasses.replace(cfg, catalog=dataclasses.replace(cfg.catalog, database="export_test"))
    ingest.run(spark, tcfg, str(root), held(lake, tcfg))
    pairs, images = lake_at(lake).read(spark, "pairs"), lake_at(lake).read(spark, "images")
    rows, _ = dedup.find(pairs, images, cfg.quality)
    held(lake, tcfg).ensure_tables(spark, job="validate")
    held(lake).replace(spark, "duplicates", rows.withColumn("validate_run_id", F.lit("v-test"))
                         .withColumn("computed_at", F.current_timestamp()))
    held(lake, tcfg).ensure_tables(spark, job="score_clip")
    scores = spark.createDataFrame(
        [(r.pair_id, r.discipline, MODEL, r.arxiv_id, known_score(r.pair_id), 1 - known_score(r.pair_id), "ok")
         for r in pairs.select("pair_id", "discipline", "arxiv_id").collect()],
        "pair_id string, discipline string, model string, arxiv_id string, score_caption double, "
        "score_recaption double, status string").withColumn("scored_at", F.current_timestamp())
    held(lake).append(spark, "clip_scores", scores)
    return lake, groups


def by_pair(spark, lake: str) -> dict[str, dict]:
    return {r["pair_id"]: r.asDict() for r in lake_at(lake).read(spark, "pairs").collect()}


def stored(spark, lake: str) -> dict[str, dict]:
    return {r["image_sha256"]: r.asDict() for r in
            lake_at(lake).read(spark, "images").select("image_sha256", "content", "thumbnail").collect()}


def shard_files(out: Path, suffix: str = "tar") -> list[str]:
    return sorted(glob.glob(str(out / f"shard-*.{suffix}")))


def file_sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_webdataset_shards_read_by_webdataset_equal_the_lake(spark, cfg, lake, tmp_path):
    import webdataset as wds

    lake, _ = lake
    out = tmp_path / "wds"
    result = export.run(spark, cfg, lake_at(lake, cfg), str(out), export.Spec(shard_bytes=SHARD, order="pair_id"))
    pairs, blobs = by_pair(spark, lake), stored(spark, lake)
    seen = {}
    for s in wds.WebDataset(shard_files(out), shardshuffle=False):
        meta = json.loads(s["json"])
        p = pairs[s["__key__"]]
        ext = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "GIF": "gif"}[p["image_format"]]
        assert s[ext] == blobs[p["image_sha256"]]["content"], "image bytes differ from images.content"
        assert s["txt"].decode() == p["recaption"]
        for k in ("pair_id", "source", "source_file", "source_line", "arxiv_id", "discipline", "title",
                  "image_sha256", "width", "height"):
            assert meta[k] == p[k], k
        assert meta["caption_chars"] == len(p["caption"] or "") and meta["recaption_chars"] == len(p["recaption"])
        assert meta["license"] == "CC BY-NC 4.0"
        assert meta["scores"] == [{"model": MODEL, "score_caption": known_score(p["pair_id"]),
                                   "score_recaption": 1 - known_score(p["pair_id"]), "status": "ok"}]
        seen[s["__key__"]] = meta
    assert set(seen) == set(pairs) and result.samples == len(pairs)
    # the manifest: every shard's bytes and sha256, counts as SQL counts them, versions of what was read
    m = json.loads((out / "_manifest.json").read_text())
    assert (out / "_SUCCESS").exists() and not (out / "_manifest.draft.json").exists()
    assert [s["name"] for s in m["shards"]] == [os.path.basename(f) for f in shard_files(out)]
    for s in m["shards"]:
        assert s["sha256"] == file_sha(str(out / s["name"])) and s["bytes"] == (out / s["name"]).stat().st_size
    sql = {r[0]: r[1] for r in lake_at(lake).read(spark, "pairs").groupBy("discipline").count().collect()}
    assert m["by_discipline"] == sql and m["samples"] == sum(sql.values())
    tables = ("pairs", "images", "duplicates", "clip_scores")
    assert m["versions"] == {t: lake_at(lake).version(t, spark) for t in tables}
    # filled to the size target: each shard but the last within one sample of it, pairs in pair_id order
    sizes = [s["bytes"] for s in m["shards"]]
    assert len(sizes) >= 4 and all(SHARD * 0.5 < b < SHARD * 1.6 for b in sizes[:-1]), sizes
    keys = [k for f in shard_files(out) for k in _tar_keys(f)]
    assert keys == sorted(keys)


def test_storage_order_reads_the_tables_files_in_their_order(spark, cfg, lake, tmp_path):
    """--order storage: the same samples (image bytes equal images.content), in the order the images table's
    files hold them at the pinned version (computed here with delta-rs and pyarrow, not with Spark), shards
    filled to the target; refused on a table with deletion vectors."""
    import pyarrow.parquet as pq
    import webdataset as wds
    from deltalake import DeltaTable

    lake, _ = lake
    spec = export.Spec(shard_bytes=SHARD)      # storage order is the default
    assert spec.order == "storage"
    first = export.run(spark, cfg, lake_at(lake, cfg), str(tmp_path / "a"), spec).manifest
    pairs, blobs = by_pair(spark, lake), stored(spark, lake)
    got = []
    for s in wds.WebDataset(shard_files(tmp_path / "a"), shardshuffle=False):
        p = pairs[s["__key__"]]
        ext = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "GIF": "gif"}[p["image_format"]]
        assert s[ext] == blobs[p["image_sha256"]]["content"]
        assert json.loads(s["json"])["pair_id"] == p["pair_id"] and s["txt"].decode() == p["recaption"]
        got.append(s["__key__"])
    assert sorted(got) == sorted(pairs) and first["samples"] == len(pairs)
    table = DeltaTable(str(Path(lake) / "images"), version=first["versions"]["images"])
    position = {}
    for f, uri in enumerate(sorted(table.file_uris())):
        for row, sha in enumerate(pq.read_table(uri.removeprefix("file://"), columns=["image_sha256"])
                                  .column(0).to_pylist()):
            position.setdefault(sha, (f, row))
    assert got == sorted(pairs, key=lambda pid: (position[pairs[pid]["image_sha256"]], pid))
    assert got != sorted(got)                                   # not pair_id order
    sizes = [s["bytes"] for s in first["shards"]]
    assert len(sizes) >= 4 and all(SHARD * 0.5 < b < SHARD * 1.6 for b in sizes[:-1]), sizes
    # (the same shards again from another run, and from the lake on S3: the S3 test below)
    # a table whose files may hold rows Delta hides (deletion vectors): refused in one line, before any work
    copy = tmp_path / "dv-lake"
    shutil.copytree(lake, copy)
    spark.sql(f"ALTER TABLE delta.`{copy / 'images'}` SET TBLPROPERTIES ('delta.enableDeletionVectors' = 'true')")
    with pytest.raises(export.ExportError, match="deletion vectors and column mapping"):
        export.run(spark, cfg, lake_at(str(copy), cfg), str(tmp_path / "c"), spec)
    assert not (tmp_path / "c" / "_manifest.draft.json").exists()


def test_a_manifest_from_before_order_existed_reads_as_pair_id_order():
    old = export.Spec(shard_bytes=SHARD, order="pair_id").as_dict()
    del old["order"]
    assert export.Spec.from_dict(old) == export.Spec(shard_bytes=SHARD, order="pair_id")
    assert export.Spec.from_dict(export.Spec().as_dict()).order == "storage"


@pytest.mark.parametrize("text", ["1" + "0" * 400 + "TB", "10^30TB", "2TiB", "1000", "0", "1.5e3KB", "-5MB"])
def test_a_shard_size_out_of_range_or_form_is_one_error(text):
    with pytest.raises(export.ExportError, match="--shard-size"):
        export.parse_size(text)


def test_shard_sizes_at_the_ends_of_the_range():
    assert export.parse_size("1KiB") == 1024 and export.parse_size("1TiB") == 1 << 40
    assert export.parse_size("0.5GB") == 500_000_000


@pytest.mark.parametrize("change, message", [
    ({"shard_bytes": 0}, "shard size must be a whole number"),
    ({"shard_bytes": "512MB"}, "shard size must be a whole number"),
    ({"shard_bytes": 1e30}, "shard size must be a whole number"),
    ({"shard_bytes": True}, "shard size must be a whole number"),
    ({"where": 5}, "--where must be text"),
    ({"min_score": "high", "model": "m"}, "--min-score must be a number"),
    ({"min_score": 7, "model": "m"}, "--min-score must be a number between -1 and 1"),
    ({"dedup": "semantic!"}, "--dedup must be one of"),
])
def test_a_manifest_spec_is_checked_as_flags_are(change, message):
    spec = export.Spec.from_dict({**export.Spec().as_dict(), **change})
    with pytest.raises(export.ExportError, match=message):
        spec.check()


def _tar_keys(path: str) -> list[str]:
    import tarfile

    with tarfile.open(path) as tar:
        names = [m.name for m in tar]
        assert all(m.mtime == 0 and m.mode == 0o444 for m in tar.getmembers())
    return list(dict.fromkeys(n.split(".", 1)[0] for n in names))


def test_parquet_shards_with_both_texts_and_thumbnails_read_by_pyarrow_and_datasets(spark, cfg, lake, tmp_path,
                                                                                    monkeypatch):
    import pyarrow.parquet as pq

    lake, _ = lake
    out = tmp_path / "pq"
    small = dataclasses.replace(cfg, export=dataclasses.replace(cfg.export, row_group_bytes=20_000))
    export.run(spark, small, lake_at(lake, small), str(out),
               export.Spec(format="parquet", text="both", image="thumbnail", shard_bytes=60_000))
    pairs, blobs = by_pair(spark, lake), stored(spark, lake)
    files = shard_files(out, "parquet")
    assert len(files) >= 2
    rows, biggest = 0, max(len(b["thumbnail"]) for b in blobs.values())
    for i, f in enumerate(files):
        meta = pq.ParquetFile(f).metadata
        assert meta.num_row_groups >= 2 or i == len(files) - 1, "row groups are not capped in bytes"
        assert all(meta.row_group(g).total_byte_size < 20_000 + biggest + 8_000 for g in range(meta.num_row_groups))
        table = pq.read_table(f)
        for r in table.to_pylist():
            p = pairs[r["key"]]
            assert r["image"] == blobs[p["image_sha256"]]["thumbnail"] and r["image_ext"] == "jpg"
            assert (r["caption"], r["recaption"]) == (p["caption"] or "", p["recaption"] or "")
            assert json.loads(r["json"])["discipline"] == p["discipline"] == r["discipline"]
            rows += 1
    assert rows == len(pairs)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import datasets

    ds = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "hf-cache"))
    assert ds.num_rows == len(pairs) and set(ds["key"]) == set(pairs)
    first = ds[0]
    assert first["image"] == blobs[pairs[first["key"]]["image_sha256"]]["thumbnail"]


def _exported(out: Path) -> set[str]:
    m = json.loads((out / "_manifest.json").read_text())
    keys = [k for s in m["shards"] for k in _tar_keys(str(out / s["name"]))]
    assert len(keys) == len(set(keys)) == m["samples"]
    return set(keys)


def test_where_dedup_and_score_threshold_equal_the_same_filter_in_sql(spark, cfg, lake, tmp_path):
    lake, groups = lake
    pairs = lake_at(lake).read(spark, "pairs")
    dup = {(r.group_kind, r.pair_id): r.group_id for r in lake_at(lake).read(spark, "duplicates").collect()}
    by_path = {r.image_path: r.pair_id
               for r in pairs.where("source = 'biorxiv'").select("image_path", "pair_id").collect()}
    # planted groups are found: 3 pairs share bytes, 2 images are near, the third group is both
    exact_of = {k[1]: g for k, g in dup.items() if k[0] == "exact"}
    near_of = {k[1]: g for k, g in dup.items() if k[0] == "near"}
    planted = {g: [by_path[p] for p in paths] for g, paths in groups.items()}
    assert len({exact_of[p] for p in planted["exact"]}) == 1 and len({near_of[p] for p in planted["near"]}) == 1
    assert len({near_of[p] for p in planted["both"]}) == 1

    where = "discipline IN ('biology', 'physics', 'chemistry') OR source = 'biorxiv'"
    expected = {r.pair_id for r in pairs.where(where).collect()}
    got = _exported(_run(spark, cfg, lake, tmp_path / "w", where=where))
    assert got == expected and len(expected) > 10

    # exact: one pair per exact group among the selected, its lowest pair_id
    exact = _run(spark, cfg, lake, tmp_path / "e", where=where, dedup="exact")
    want = {p for p in expected if p not in exact_of or p == min(q for q in expected if exact_of.get(q) == exact_of[p])}
    assert _exported(exact) == want
    assert min(planted["exact"]) in want and len(set(planted["exact"]) & want) == 1
    # near: also one per near-duplicate cluster
    near = _exported(_run(spark, cfg, lake, tmp_path / "n", where=where, dedup="near"))
    for g in ("exact", "near", "both"):
        assert set(planted[g]) & near == {min(planted[g])}, g
    m = json.loads((tmp_path / "n" / "_manifest.json").read_text())
    assert m["selection"]["where"] == len(expected) and m["selection"]["dedup"] == len(near)

    # known scores: the model's score of the chosen field at or above the threshold, and --where sees it
    scored = _exported(_run(spark, cfg, lake, tmp_path / "s", model="planted", min_score=0.4,
                            score_field="caption", where="score_recaption > 0.1"))
    all_pairs = [r.pair_id for r in pairs.collect()]
    assert scored == {p for p in all_pairs if known_score(p) >= 0.4 and 1 - known_score(p) > 0.1}
    assert 0 < len(scored) < len(all_pairs)


def test_where_sees_text_signals_fluency_and_figure_type(spark, cfg, lake, tmp_path):
    """--where drops truncated or non-English pairs, boilerplate, high pseudo-perplexity, by figure type:
    equal to the same filter over the tables read back (pandas)."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    from helpers import copy_lake
    from s1mmalign.score import pipeline as score

    src, _ = lake
    lake = str(copy_lake(Path(src), tmp_path / "lake"))
    pairs = lake_at(lake).read(spark, "pairs")
    some = [r.pair_id for r in pairs.orderBy("pair_id").collect()]
    # planted: figure types, four captions cut mid-sentence, a caption shared by three papers, German recaptions
    table = DeltaTable.forPath(spark, lake_at(lake).path("pairs"))
    table.update(F.col("pair_id").isin(some[:20]), {"metadata_json": F.lit('{"figure_type": "plot"}')})
    table.update(F.col("pair_id").isin(some[20:24]), {"caption": F.lit("Figure 2: the loss of the model as the")})
    table.update(F.col("pair_id").isin(some[30:36]), {"caption": F.lit("Figure 1: Results.")})
    table.update(F.col("pair_id").isin(some[40:43]), {
        "recaption": F.lit("Die Abbildung zeigt die Temperaturabhängigkeit des Widerstands für drei Proben.")})
    score.run_text(spark, cfg, held(lake, cfg))
    held(lake, cfg).ensure_tables(spark, job="score_fluency")
    held(lake).append(spark, "fluency_scores", pairs.where(F.col("pair_id").isin(some[::2])).select(
        "pair_id", "discipline", F.lit("bert@x").alias("model"), "arxiv_id", F.lit("unknown").alias("figure_type"),
        F.lit("all").alias("sample"), F.lit(-1.0).alias("pll_caption"), F.lit(1).alias("tokens_caption"),
        F.lit(9.0).alias("ppl_caption"), F.lit(-1.0).alias("pll_recaption"), F.lit(1).alias("tokens_recaption"),
        (F.conv(F.substring("pair_id", 1, 3), 16, 10).cast("double") / 40).alias("ppl_recaption"),
        F.lit("ok").alias("status"), F.current_timestamp().alias("scored_at")))
    where = ("NOT caption_truncated AND NOT recaption_non_english AND NOT boilerplate AND figure_type <> 'plot' "
             "AND ppl_recaption < 60")
    got = _exported(_run(spark, cfg, lake, tmp_path / "out", where=where, boilerplate_papers=3))
    p = lake_at(lake).read(spark, "pairs").toPandas().set_index("pair_id")
    ts = lake_at(lake).read(spark, "text_signals").toPandas().set_index("pair_id")
    fl = lake_at(lake).read(spark, "fluency_scores").toPandas().set_index("pair_id")
    papers = ts.join(p.paper_id).groupby("caption_key").paper_id.nunique()
    boiler = ts.caption_key.map(papers).fillna(0) >= 3
    plot = p.metadata_json.fillna("").str.contains('"plot"')
    want = {pid for pid in p.index if not ts.caption_truncated[pid] and ts.recaption_lang[pid] in ("en", None)
            and not boiler[pid] and not plot[pid] and pid in fl.index and fl.ppl_recaption[pid] < 60}
    assert got == want
    assert boiler[some[30:36]].all() and ts.caption_truncated[some[20]] and ts.recaption_lang[some[40]] == "de"
    assert 5 < len(want) < len(fl)
    assert json.loads((tmp_path / "out" / "_manifest.json").read_text())["spec"]["boilerplate_papers"] == 3


def _run(spark, cfg, lake, out: Path, *, model=None, **spec) -> Path:
    export.run(spark, cfg, lake_at(lake, cfg), str(out), export.Spec(shard_bytes=SHARD, **spec), model_name=model)
    return out


@pytest.mark.parametrize("spec, model, message", [
    (dict(where="discipline = "), None, "--where"),
    (dict(where="no_such_column > 1"), None, "no_such_column"),
    (dict(where="width + 1"), None, "not a condition"),
    (dict(where="score_caption > 0.5"), None, "score_caption"),
    (dict(), "ViT-L-14", "has no scores"),
    (dict(where="discipline = 'alchemy'"), None, "the selection is empty .* where kept 0"),
    # all of Spark SQL is not: no file or table read, no JVM call, the same answer on every run
    (dict(where="EXISTS (SELECT 1 FROM text.`/etc/passwd`)"), None, "subquery or table reference .Exists."),
    (dict(where="pair_id IN (SELECT pair_id FROM s1mmalign.pairs)"), None, "subquery or table reference"),
    (dict(where="(SELECT count(*) FROM parquet.`/tmp`) > 0"), None, "ScalarSubquery"),
    (dict(where="java_method('java.lang.System', 'exit', 0) = 1"), None, "function java_method is not allowed"),
    (dict(where="REFLECT('java.util.UUID', 'randomUUID') <> ''"), None, "function REFLECT is not allowed"),
    (dict(where="rand() < 0.5"), None, "function rand is not allowed"),
    (dict(where="current_date() > '2020-01-01'"), None, "function current_date is not allowed"),
    (dict(where="spark_catalog.default.f(caption)"), None, "function spark_catalog.default.f is not allowed"),
    (dict(where="source = 'arxiv'; DROP TABLE s1mmalign.pairs"), None, "--where"),
    (dict(where="length(caption) > 10 AND exists(categories, c -> rand() > 0.5)"), None, "function rand"),
    (dict(shard_bytes=0), None, "shard size must be a whole number of bytes between 1024"),
    (dict(min_score=float("nan")), "planted", "--min-score must be a number between -1 and 1"),
])
def test_bad_predicate_or_model_is_one_error_before_any_shard(spark, cfg, lake, tmp_path, spec, model, message):
    lake, _ = lake
    with pytest.raises(export.ExportError, match=message) as err:
        export.run(spark, cfg, lake_at(lake, cfg), str(tmp_path / "o"), export.Spec(**spec), model_name=model)
    assert "\n" not in str(err.value)
    assert not list((tmp_path / "o").glob("shard-*")) and not (tmp_path / "o" / "_manifest.draft.json").exists()


def test_a_where_too_long_or_too_large_is_refused_before_its_walk_ends(spark):
    with pytest.raises(export.ExportError, match="--where of 100001 characters: at most 100000"):
        select.check_where(spark, "a" * 100_001)
    with pytest.raises(export.ExportError, match="over 20000 terms"):
        select.check_where(spark, " OR ".join(f"c{i}" for i in range(10_001)))
    select.check_where(spark, "source IN (" + ", ".join(f"'s{i}'" for i in range(2000)) + ")")   # a long IN list


def test_missing_tables_foreign_out_and_the_jobs_exit_codes(spark, cfg, lake, tmp_path):
    lake, _ = lake
    bare = tmp_path / "bare"
    for t in ("pairs", "images"):
        shutil.copytree(Path(lake) / t, bare / t)
    with pytest.raises(export.ExportError, match="no duplicates table.*jobs/validate.py"):
        export.run(spark, cfg, lake_at(str(bare), cfg), str(tmp_path / "o1"), export.Spec(dedup="exact"))
    with pytest.raises(export.ExportError, match="no clip_scores table.*jobs/score_clip.py"):
        export.run(spark, cfg, lake_at(str(bare), cfg), str(tmp_path / "o2"), export.Spec(), model_name="ViT-B-32")
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("x")
    with pytest.raises(export.ExportError, match="not an export's"):
        export.run(spark, cfg, lake_at(lake, cfg), str(foreign), export.Spec())
    assert (foreign / "thesis.tex").read_text() == "x" and len(os.listdir(foreign)) == 1
    # as a user runs it: one line on stderr, exit 2 (flags checked before Spark starts where they can be)
    for args, message in (
        (["--where", "discipline ="], "export: error: --where"),
        (["--min-score", "0.3"], "export: error: --min-score needs --model"),
        (["--shard-size", "lots"], "export: error: --shard-size 'lots'"),
        (["--from-manifest", str(tmp_path / "none.json"), "--text", "caption"],
         "export: error: --from-manifest takes the spec from the manifest: drop --text"),
        (["--from-manifest", str(tmp_path / "none.json")], "export: error: --from-manifest"),
    ):
        proc = _job(lake, tmp_path / "o3", *args)
        assert proc.returncode == 2, proc.stderr
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("export:")]
        assert len(errors) == 1 and errors[0].startswith(message), proc.stderr
        assert "Traceback" not in proc.stderr


def _job(lake: str, out: Path, *args: str, popen: bool = False):
    from helpers import run_job

    if popen:
        cmd = [str(BIN / "spark-submit"), "--master", "local[2]", str(REPO / "jobs" / "export.py"),
               "--lake", lake, "--out", str(out), *args]
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True, env={**os.environ, "PYSPARK_PYTHON": str(BIN / "python")})
    return run_job("export", "--lake", lake, "--out", str(out), *args, submit=False)


def test_same_spec_same_bytes_and_from_manifest_after_the_lake_changed(spark, cfg, lake, tmp_path):
    from delta.tables import DeltaTable

    lake, _ = lake
    copy = str(tmp_path / "lake")
    shutil.copytree(lake, copy)
    spec = export.Spec(shard_bytes=SHARD, dedup="near", text="caption")
    a = export.run(spark, cfg, lake_at(copy, cfg), str(tmp_path / "a"), spec).manifest
    b = export.run(spark, cfg, lake_at(copy, cfg), str(tmp_path / "b"), spec).manifest
    assert a["shards"] == b["shards"] and len(a["shards"]) >= 3
    for s in a["shards"]:
        assert (tmp_path / "a" / s["name"]).read_bytes() == (tmp_path / "b" / s["name"]).read_bytes()
    # the lake moves on; the same spec over the manifest's versions (time travel) writes the same shards
    DeltaTable.forPath(spark, lake_at(copy).path("pairs")).delete("discipline = 'physics'")
    now = export.run(spark, cfg, lake_at(copy, cfg), str(tmp_path / "now"), spec).manifest
    assert now["samples"] < a["samples"]
    again = export.run(spark, cfg, lake_at(copy, cfg), str(tmp_path / "again"), export.Spec.from_dict(a["spec"]),
                       versions=a["versions"]).manifest
    assert again["shards"] == a["shards"] and again["versions"] == a["versions"]
    # and a finished export run again over its own folder is complete as it is
    done = export.run(spark, cfg, lake_at(copy, cfg), str(tmp_path / "a"), spec)
    assert done.written == 0 and done.manifest["shards"] == a["shards"]


def test_kill_9_mid_export_then_rerun_gives_the_shards_of_one_clean_run(spark, cfg, lake, tmp_path):
    lake, _ = lake
    clean = export.run(spark, cfg, lake_at(lake, cfg), str(tmp_path / "clean"),
                       export.Spec(shard_bytes=40_000)).manifest
    out = tmp_path / "out"
    proc = _job(lake, out, "--shard-size", "40KB", popen=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(shard_files(out)) < 3 and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the export ended before it could be killed: " + proc.stdout.read()[-2000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "_SUCCESS").exists() and (out / "_manifest.draft.json").exists()
    before = len(shard_files(out))
    assert 0 < before < len(clean["shards"])
    torn = sorted((out / "_shards").iterdir())[0]            # a record cut short: its shard is written again
    torn.write_bytes(torn.read_bytes()[:10])
    proc = _job(lake, out, "--shard-size", "40KB", "--log-level", "WARNING")
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = proc.stdout.strip().splitlines()[-1]
    assert line.startswith(f"export: {clean['samples']} samples in {len(clean['shards'])} shards"), line
    written = int(line.split("(", 1)[1].split()[0])
    # a shard published but not yet recorded is redone, and so is the one whose record was torn
    assert written <= len(clean["shards"]) - before + 3
    m = json.loads((out / "_manifest.json").read_text())
    assert m["shards"] == clean["shards"]
    assert sorted(os.listdir(out)) == sorted(["_SUCCESS", "_manifest.json", *(s["name"] for s in clean["shards"])])


def test_export_from_a_lake_on_s3_to_s3_equals_the_local_export(spark, cfg, lake, moto, tmp_path):
    from helpers import s3_cfg

    lake, _ = lake
    s3 = s3_cfg(cfg, moto, tmp_path)
    session.apply_s3a(spark, s3)
    store = S3Store("exportlake", "", S3Conf(endpoint_url=moto))
    store.client.create_bucket(Bucket="exportlake")
    for t in ("pairs", "images", "duplicates", "clip_scores"):
        store.upload_tree(str(Path(lake) / t), f"lake/{t}")
    spec = export.Spec(shard_bytes=SHARD, dedup="exact")
    local = export.run(spark, cfg, lake_at(lake, cfg), str(tmp_path / "local"), spec).manifest
    remote = export.run(spark, s3, lake_at("s3a://exportlake/lake", s3), "s3://exportlake/out", spec).manifest
    assert remote["shards"] == local["shards"] and remote["versions"] == local["versions"]
    keys = {o["Key"] for o in store.client.list_objects_v2(Bucket="exportlake", Prefix="out/")["Contents"]}
    assert keys == {"out/_SUCCESS", "out/_manifest.json", *(f"out/{s['name']}" for s in local["shards"])}
    body = store.client.get_object(Bucket="exportlake", Key=f"out/{local['shards'][0]['name']}")["Body"].read()
    assert body == (tmp_path / "local" / local["shards"][0]["name"]).read_bytes()
    # (above, the default storage order: the shard tasks read the images' Parquet files from S3 with pyarrow)
    # pair_id order: the image bytes read by Spark from S3 and shuffled to their shards
    spec = dataclasses.replace(spec, order="pair_id")
    local = export.run(spark, cfg, lake_at(lake, cfg), str(tmp_path / "local-pair-id"), spec).manifest
    remote = export.run(spark, s3, lake_at("s3a://exportlake/lake", s3), "s3://exportlake/pair-id", spec).manifest
    assert remote["shards"] == local["shards"] and remote["samples"] == local["samples"] > 0


def test_a_torn_shard_record_is_not_a_kept_shard_and_stops_nothing(tmp_path):
    store = LocalStore(str(tmp_path))
    draft = {"shards": [{"name": "shard-000000.tar", "samples": 2}, {"name": "shard-000001.tar", "samples": 1}]}
    for name, data in (("shard-000000.tar", b"a" * 100), ("shard-000001.tar", b"b" * 50)):
        store.put(name, data)
        record = {"name": name, "samples": 2 if name.endswith("0.tar") else 1, "bytes": len(data),
                  "sha256": hashlib.sha256(data).hexdigest()}
        store.put(f"{manifest.RECORDS}/{name}.json", json.dumps(record).encode())
    assert set(manifest.kept_shards(store, draft)) == {"shard-000000.tar", "shard-000001.tar"}
    torn = f"{manifest.RECORDS}/shard-000001.tar.json"
    store.put(torn, store.get(torn)[0][:10])                 # cut by a crash
    assert set(manifest.kept_shards(store, draft)) == {"shard-000000.tar"}
    store.put(torn, b'["not", "a record"]')
    assert set(manifest.kept_shards(store, draft)) == {"shard-000000.tar"}
