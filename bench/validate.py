"""Validation time on synthetic pairs rows against one plain Spark SQL pass computing the same numbers.

    .venv/bin/python bench/validate.py [--rows 1000000] [--cores 2]

Lake: --rows pairs rows (metadata only: captions, ids, paths, hashes; no image bytes), as many images
rows (empty content), 2% quarantined lines and a small ingest_log (whose counts agree), written once with Spark under
work/bench/. 1% of pairs reuse another pair's image, 0.5% of images are near duplicates of another.
Both sides run in one warm local[cores] session over the same Delta tables:
  validate  validate.run: duplicates (exact groups + banded perceptual-hash clusters) written, every
            Great Expectations suite run, quality_results merged, Data Docs built;
  baseline  plain Spark SQL computing the same aggregates (every count and share the suites check,
            the exact and near duplicate shares by the same banded join), collected to the driver.
The bench checks that both arrive at the same numbers, then prints both times; ratio = baseline time
over validation time (target: validation under 3 passes, ratio >= 0.33).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))
WORK = REPO / "work" / "bench"

from s1mmalign import cli, config  # noqa: E402
from s1mmalign.lake import schemas, session  # noqa: E402
from s1mmalign.lake.root import Lake  # noqa: E402
from s1mmalign.validate import dedup  # noqa: E402
from s1mmalign.validate import pipeline as validate  # noqa: E402

DISCIPLINES = ["mathematics", "physics", "chemistry", "biology", "astronomy", "earth_science", "medicine",
               "engineering", "computer_science"]
CATEGORIES = ["math.AP", "hep-th", "physics.chem-ph", "q-bio.NC", "astro-ph.CO", "physics.geo-ph",
              "physics.med-ph", "eess.SP", "cs.LG"]


def make_lake(spark, rows: int) -> Path:
    """The synthetic lake (built once per row count)."""
    from pyspark.sql import functions as F

    lake = WORK / f"validate-{rows}"
    if (lake / "done").exists():
        return lake
    shutil.rmtree(lake, ignore_errors=True)
    dest = Lake(str(lake), database="s1mmalign_bench").hold("bench")
    dest.ensure_tables(spark)
    ids = spark.range(rows, numPartitions=8)
    h = F.abs(F.xxhash64("id"))
    # image i: its own bytes; 1% of pairs point at the image of pair id-1 (bytes shared by two pairs)
    img_id = F.when(F.col("id") % 100 == 7, F.col("id") - 1).otherwise(F.col("id"))
    disc_i = (h % 9).cast("int")
    yymm = F.format_string("%02d%02d", (F.col("id") % 10 + 15).cast("int"), (F.col("id") % 12 + 1).cast("int"))
    arxiv_id = F.format_string("%s.%05d", yymm, (F.col("id") % 99999).cast("int"))
    source = F.when(F.col("id") % 50 == 1, "biorxiv").when(F.col("id") % 50 == 2, "chemrxiv").otherwise("arxiv")
    is_arxiv = source == "arxiv"
    words = F.array(*[F.lit(w) for w in ("signal", "rate", "field", "model", "phase", "energy", "network",
                                         "sample", "flux", "layer", "spectrum", "noise")])
    caption_len = (F.col("id") % 40 + 5).cast("int")
    def word(k):
        return F.element_at(words, (k % 12 + 1).cast("int"))

    caption = F.concat(F.lit("Figure 1: "), F.array_join(F.transform(
        F.sequence(F.lit(1), caption_len), lambda i: word(F.col("id") + i)), " "))
    recaption = F.concat(F.lit("The figure shows "), F.array_join(F.transform(
        F.sequence(F.lit(1), caption_len * 3), lambda i: word(F.col("id") * 7 + i)), " "))
    cats = F.array(F.element_at(F.array(*[F.lit(c) for c in CATEGORIES]), disc_i + 1))
    discipline = F.when(F.col("id") % 100 == 3, "unknown").otherwise(
        F.element_at(F.array(*[F.lit(d) for d in DISCIPLINES]), disc_i + 1))
    path = F.when(is_arxiv, F.format_string("images/%s/%s.tar.gz/fig%03d.png", yymm, arxiv_id,
                                            (F.col("id") % 9 + 1).cast("int"))) \
        .otherwise(F.format_string("images/10.1101_%d/fig1.png", F.col("id")))
    dhash = F.xxhash64(F.concat(F.lit("d"), img_id.cast("string")))
    now = F.current_timestamp()
    pairs = ids.select(
        F.substring(F.sha2(F.concat(source, F.lit("\x00"), path), 256), 1, 32).alias("pair_id"),
        source.alias("source"), discipline.alias("discipline"),
        F.when(is_arxiv, arxiv_id).alias("arxiv_id"), F.lit(1).alias("arxiv_version"),
        F.when(is_arxiv, arxiv_id).otherwise(F.concat(F.lit("10.1101/"), F.col("id").cast("string"))).alias("paper_id"),
        path.alias("image_path"), caption.alias("caption"), recaption.alias("recaption"),
        F.lit("A synthetic paper").alias("title"), cats.alias("categories"), cats[0].alias("primary_category"),
        F.lit(None).cast("string").alias("doi"), F.lit("{}").alias("metadata_json"),
        F.sha2(img_id.cast("string"), 256).alias("image_sha256"), F.lit("PNG").alias("image_format"),
        F.lit(640).alias("width"), F.lit(480).alias("height"), F.lit(80000).cast("bigint").alias("image_bytes"),
        dhash.alias("image_dhash"), F.lit("images_2019.tar.gz").alias("image_container"),
        F.lit("arxiv/jsonl/19_recaption.jsonl").alias("source_file"), (F.col("id") + 1).alias("source_line"),
        F.sha2(F.col("id").cast("string"), 224).alias("row_hash"), F.lit("bench").alias("ingest_run_id"),
        now.alias("ingested_at"))
    pairs.write.format("delta").mode("append").save(dest.path("pairs"))
    # one images row per distinct image; 0.5% have a near duplicate (one bit away from image id-2)
    img = ids.where(F.col("id") % 100 != 7)
    near = F.col("id") % 200 == 11
    near_hash = F.xxhash64(F.concat(F.lit("d"), (F.col("id") - 2).cast("string"))).bitwiseXOR(
        F.expr("shiftleft(CAST(1 AS BIGINT), CAST(id % 64 AS INT))"))
    images = img.select(
        F.sha2(F.col("id").cast("string"), 256).alias("image_sha256"),
        F.element_at(F.array(*[F.lit(d) for d in DISCIPLINES]),
                     (F.abs(F.xxhash64("id")) % 9).cast("int") + 1).alias("discipline"),
        F.lit("PNG").alias("format"), F.lit(640).alias("width"), F.lit(480).alias("height"),
        F.lit(80000).cast("bigint").alias("image_bytes"),
        F.when(near, near_hash).otherwise(
            F.xxhash64(F.concat(F.lit("d"), F.col("id").cast("string")))).alias("image_dhash"),
        F.lit(b"").alias("content"), F.lit(b"").alias("thumbnail"), F.lit(256).alias("thumbnail_width"),
        F.lit(192).alias("thumbnail_height"), F.lit("arxiv").alias("first_source"),
        F.lit("images/x").alias("first_image_path"), F.lit("bench").alias("ingest_run_id"), now.alias("ingested_at"))
    images.write.format("delta").mode("append").save(dest.path("images"))
    quarantine = spark.range(rows // 50, numPartitions=2).select(
        F.lit("arxiv").alias("source"), F.lit("arxiv/jsonl/19_recaption.jsonl").alias("source_file"),
        (F.col("id") + rows + 1).alias("source_line"), F.lit("{").alias("raw"),
        F.lit(None).cast("string").alias("image_path"),
        F.lit("malformed_json").alias("reason"), F.lit("bench").alias("detail"), F.lit("bench").alias("ingest_run_id"),
        now.alias("ingested_at"))
    quarantine.write.format("delta").mode("append").save(dest.path("quarantine"))
    # ingest_log: the file every row came from, its counts equal to the rows (lines_reconciled passes), and
    # 49 files of an unpacked source with no line
    log_rows = spark.range(50).select(
        F.lit("arxiv").alias("source"),
        F.when(F.col("id") == 0, F.lit("arxiv/jsonl/19_recaption.jsonl"))
         .otherwise(F.format_string("arxiv/jsonl/%02d.jsonl", F.col("id").cast("int"))).alias("source_file"),
        F.lit("jsonl").alias("kind"), F.lit(None).cast("string").alias("archive"),
        F.lit(1 << 20).cast("bigint").alias("size"),
        now.alias("modified_at"), F.lit(None).cast("string").alias("etag"), F.lit("x").alias("fingerprint"),
        F.lit("x").alias("checksum"),
        F.when(F.col("id") == 0, F.lit(rows + rows // 50)).otherwise(0).cast("bigint").alias("read"),
        F.when(F.col("id") == 0, F.lit(rows)).otherwise(0).cast("bigint").alias("accepted"),
        F.when(F.col("id") == 0, F.lit(rows // 50)).otherwise(0).cast("bigint").alias("quarantined"),
        F.lit("ok").alias("status"), F.lit(None).cast("string").alias("detail"),
        F.lit("bench").alias("ingest_run_id"), now.alias("ingested_at"))
    log_rows.write.format("delta").mode("append").save(dest.path("ingest_log"))
    (lake / "done").write_text("ok")
    return lake


def baseline_sql(lake: Path, cfg) -> str:
    """One plain Spark SQL pass per table: every number the suites check."""
    q = cfg.quality
    t = {n: f"delta.`{Lake(str(lake)).path(n)}`" for n in ("pairs", "images", "quarantine", "ingest_log")}
    taxonomy = ", ".join(f"'{c}'" for c in validate.taxonomy(cfg))
    discs = ", ".join(f"'{d}'" for d in validate.parameters(cfg)["disciplines"])
    formats = ", ".join(f"'{f}'" for f in cfg.ingest.formats)
    reasons = ", ".join(f"'{r}'" for r in schemas.quarantine_reasons())
    layouts = dict(q.layouts)
    default = layouts.pop("default")
    esc = lambda regex: regex.replace("\\", "\\\\")  # noqa: E731  (SQL literals unescape backslashes)
    layout = "CASE " + " ".join(f"WHEN source = '{s}' THEN image_path RLIKE '{esc(p)}'" for s, p in layouts.items()) \
             + f" ELSE image_path RLIKE '{esc(default)}' END"
    bands = [f"named_struct('band', {b}, 'key', shiftrightunsigned(h, {shift}) & {mask})"
             for b, (shift, mask) in enumerate(dedup._bands(q.lsh_bands))]
    unsafe, folder = esc(validate.UNSAFE_PATH), esc(validate.ARXIV_FOLDER)
    arxiv_re = r"^([0-9]{4}\\.[0-9]{4,5}|[a-z]+(-[a-z]+)*(\\.[A-Z]{2})?/[0-9]{7})$"
    return f"""
WITH p AS (SELECT * FROM {t['pairs']}),
img AS (SELECT image_sha256, image_dhash, format, width, height FROM {t['images']}),
keys AS (SELECT DISTINCT image_sha256 FROM img),
shared AS (SELECT image_sha256 FROM (SELECT DISTINCT pair_id, image_sha256 FROM p) GROUP BY image_sha256
           HAVING count(*) > 1),
hashes AS (SELECT DISTINCT image_dhash AS h FROM img),
banded AS (SELECT h, bk.band, bk.key FROM hashes LATERAL VIEW explode(array({', '.join(bands)})) x AS bk),
sizes AS (SELECT band, key FROM banded GROUP BY band, key HAVING count(*) > 1 AND count(*) <= {q.max_bucket}),
live AS (SELECT banded.* FROM banded JOIN sizes USING (band, key)),
matched AS (SELECT DISTINCT a.h AS h1, b.h AS h2 FROM live a JOIN live b ON a.band = b.band AND a.key = b.key
            AND a.h < b.h WHERE bit_count(a.h ^ b.h) <= {q.near_duplicate_distance}),
near_h AS (SELECT h1 AS h FROM matched UNION SELECT h2 FROM matched
           UNION SELECT image_dhash FROM img GROUP BY image_dhash HAVING count(DISTINCT image_sha256) > 1),
rec AS (SELECT status, accepted, quarantined, coalesce(np, 0) AS np, coalesce(nq, 0) AS nq
        FROM (SELECT source_file, status, accepted, quarantined FROM {t['ingest_log']} WHERE kind = 'jsonl') l
        FULL JOIN (SELECT source_file, count(*) AS np FROM p GROUP BY source_file) pp USING (source_file)
        FULL JOIN (SELECT source_file, count(*) AS nq FROM {t['quarantine']} GROUP BY source_file) qq
        USING (source_file)),
pc AS (
  SELECT p.*, k.image_sha256 IS NOT NULL AS has_image, s.image_sha256 IS NOT NULL AS shared_bytes,
         image_path RLIKE '{unsafe}' AS unsafe,
         CASE WHEN arxiv_id LIKE '%/%' THEN substring_index(arxiv_id, '/', -1) ELSE arxiv_id END AS num,
         {layout} AS on_layout
  FROM p LEFT JOIN keys k USING (image_sha256) LEFT JOIN shared s USING (image_sha256))
SELECT
  (SELECT named_struct(
     'rows', count(*), 'pair_ids', count(DISTINCT pair_id), 'source_paths', count(DISTINCT source, image_path),
     'absolute', sum(CAST(image_path RLIKE '^([/\\\\\\\\]|[A-Za-z]:)' AS INT)),
     'dotdot', sum(CAST(image_path RLIKE '(^|[/\\\\\\\\])\\\\.\\\\.([/\\\\\\\\]|$)' AS INT)),
     'off_layout', sum(CAST(NOT unsafe AND NOT on_layout AS INT)),
     'id_mismatch', sum(CAST(source IN ({', '.join(f"'{s}'" for s in cfg.ingest.arxiv_sources)}) AND NOT unsafe
        AND on_layout AND (arxiv_id IS NULL OR NOT coalesce(regexp_extract(image_path, '{folder}', 2) = num
        AND regexp_extract(image_path, '{folder}', 1) = substring(num, 1, 4), false)) AS INT)),
     'missing_image', sum(CAST(NOT has_image AS INT)), 'shared_share', avg(CAST(shared_bytes AS INT)),
     'bad_discipline', sum(CAST(discipline NOT IN ({discs}) AS INT)),
     'unknown_share', avg(CAST(discipline = 'unknown' AS INT)),
     'bad_arxiv_id', sum(CAST(NOT arxiv_id RLIKE '{arxiv_re}' AS INT)),
     'unknown_category_share',
       avg(CAST(size(array_except(coalesce(categories, array()), array({taxonomy}))) > 0 AS INT)),
     'recaption_share', avg(CAST(coalesce(length(trim(recaption)) > 0, false) AS INT)),
     'caption_max', max(coalesce(length(caption), 0)), 'recaption_max', max(coalesce(length(recaption), 0)))
   FROM pc) AS pairs,
  (SELECT named_struct('rows', count(*), 'shas', count(DISTINCT image_sha256),
     'bad_format', sum(CAST(format NOT IN ({formats}) AS INT)), 'min_width', min(width), 'min_height', min(height),
     'near_share', avg(CAST(image_dhash IN (SELECT h FROM near_h) AS INT))) FROM img) AS images,
  (SELECT named_struct('rows', count(*), 'bad_reason', sum(CAST(reason NOT IN ({reasons}) AS INT)))
   FROM {t['quarantine']}) AS quarantine,
  (SELECT count(*) FROM p) AS pair_rows,
  (SELECT sum(CAST(status IS NULL OR (status = 'ok' AND (np <> accepted OR nq <> quarantined)) AS INT))
   FROM rec) AS unreconciled
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()
    cli.setup_logging("INFO")            # validate's stage lines (to stderr) show where its time goes
    cfg = config.load(str(REPO / "conf" / "local.yaml"),
                      overrides={"spark": {"master": f"local[{args.cores}]", "shuffle_partitions": 2 * args.cores,
                                           "extra": {"spark.ui.enabled": "false",
                                                     "spark.driver.memory": "6g"}}})
    WORK.mkdir(parents=True, exist_ok=True)
    spark = session.build(Lake(str(WORK / "validate-catalog")), cfg, write=False)
    t0 = time.monotonic()
    lake = make_lake(spark, args.rows)
    print(f"lake: {args.rows:,} pairs rows at {lake} ({time.monotonic() - t0:.1f}s to build or find)", flush=True)
    sql = baseline_sql(lake, cfg)

    def run_baseline():
        t = time.monotonic()
        row = spark.sql(sql).first().asDict(recursive=True)
        return time.monotonic() - t, row

    def run_validate():
        shutil.rmtree(lake / "_quality", ignore_errors=True)
        t = time.monotonic()
        outcome = validate.run(spark, cfg, Lake.open(str(lake), cfg).hold("bench"))
        return time.monotonic() - t, outcome

    run_baseline()                       # warm: JIT, Delta snapshots, file listing caches
    v_time, outcome = run_validate()
    b_time, numbers = run_baseline()
    v_time2, outcome = run_validate()
    b_time2, _ = run_baseline()
    v_time, b_time = min(v_time, v_time2), min(b_time, b_time2)

    got = {r.key: r for r in outcome.results}
    obs = lambda key: json.loads(got[key].observed_value)  # noqa: E731
    unexpected = lambda key: got[key].unexpected_count      # noqa: E731
    p, i = numbers["pairs"], numbers["images"]
    checks = {
        "pairs rows": (got["deduplication.pairs:pair_id_unique"].element_count, p["rows"]),
        "dotdot": (unexpected("path_integrity.pairs:image_path_no_dotdot"), p["dotdot"]),
        "off layout": (unexpected("path_integrity.pairs:image_path_layout"), p["off_layout"]),
        "id mismatch": (unexpected("path_integrity.pairs:arxiv_id_matches_path"), p["id_mismatch"]),
        "missing image": (unexpected("path_integrity.pairs:image_row_exists"), p["missing_image"]),
        "exact share": (round(obs("deduplication.pairs:exact_duplicate_share"), 9), round(p["shared_share"], 9)),
        "near share": (round(obs("deduplication.images:near_duplicate_share"), 9), round(i["near_share"], 9)),
        "unknown share": (round(obs("schema_values.pairs:unknown_discipline_share"), 9), round(p["unknown_share"], 9)),
        "recaption share": (round(obs("schema_values.pairs:recaption_present"), 9), round(p["recaption_share"], 9)),
        "category share": (round(obs("schema_values.pairs:categories_in_taxonomy"), 9),
                           round(p["unknown_category_share"], 9)),
        "unreconciled files": (unexpected("path_integrity.source_files:lines_reconciled"), numbers["unreconciled"]),
    }
    wrong = {k: v for k, v in checks.items() if v[0] != v[1]}
    print(f"numbers agree: {not wrong} ({len(checks)} checked{'; differ: ' + str(wrong) if wrong else ''})")
    print(f"validate: {len(outcome.results)} expectations, {outcome.stats.exact_pairs:,} pairs in exact groups, "
          f"{outcome.stats.near_images:,} near-duplicate images; best of 2: {v_time:.1f}s")
    print(f"baseline: one Spark SQL pass over the same tables; best of 2: {b_time:.1f}s")
    spark.stop()
    print(f"validation on {args.rows:,} pairs rows, {args.cores} cores: validate {v_time:.1f}s, "
          f"plain Spark SQL {b_time:.1f}s, validate = {v_time / b_time:.2f} passes ... ratio={b_time / v_time:.2f}")
    return 0 if not wrong else 1


if __name__ == "__main__":
    raise SystemExit(main())
