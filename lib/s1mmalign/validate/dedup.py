"""Duplicates as data: pairs that share exact image bytes, and clusters of near-duplicate images.

Near duplicates are images whose 64-bit perceptual hashes (pairs.image_dhash) differ in at most k bits.
They are found without an all-pairs join: the distinct hashes are cut into `bands` bands, hashes that
agree on a whole band fall into one bucket, and only pairs within a bucket are compared. With more bands
than k, two hashes k bits apart always agree on some band (pigeonhole), so no match within k is missed.
Matches are then joined into clusters (connected components, by label propagation).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from s1mmalign.config import QualityConf

log = logging.getLogger(__name__)

PAIR_COLUMNS = ["pair_id", "source", "discipline", "image_path", "image_sha256", "image_dhash"]


@dataclass
class DedupStats:
    exact_groups: int = 0
    exact_pairs: int = 0
    near_clusters: int = 0
    near_images: int = 0
    near_pairs: int = 0
    candidate_pairs: int = 0
    matches: int = 0
    skipped_buckets: int = 0
    rounds: int = 0


def exact_groups(pairs: DataFrame) -> DataFrame:
    """One row per pair whose image bytes also belong to another pair (distinct pair_ids).

    Columns: PAIR_COLUMNS + group_id (the shared image_sha256), group_pairs, group_images, distance.
    """
    uniq = pairs.select(*PAIR_COLUMNS).dropDuplicates(["pair_id"])
    shared = (uniq.groupBy("image_sha256").agg(F.count("*").alias("group_pairs"))
              .where("group_pairs > 1"))
    return (uniq.join(shared, "image_sha256")
            .select(*PAIR_COLUMNS, F.col("image_sha256").alias("group_id"), "group_pairs",
                    F.lit(1).cast("bigint").alias("group_images"), F.lit(0).alias("distance")))


def _bands(bands: int) -> list[tuple[int, int]]:
    """(shift, mask) for each band of a 64-bit hash."""
    width, extra = divmod(64, bands)
    out, shift = [], 0
    for b in range(bands):
        w = width + (1 if b < extra else 0)
        out.append((shift, (1 << w) - 1))
        shift += w
    return out


def near_matches(hashes: DataFrame, params: QualityConf, stats: DedupStats) -> DataFrame:
    """Pairs of distinct hashes (h1 < h2) at Hamming distance <= params.near_duplicate_distance, found in
    banded buckets (params.lsh_bands; buckets over params.max_bucket are skipped and counted)."""
    h = hashes.select(F.col("image_dhash").alias("h")).distinct()
    keys = F.array(*[F.struct(F.lit(b).alias("band"),
                              (F.shiftrightunsigned(F.col("h"), shift).bitwiseAND(F.lit(mask))).alias("key"))
                     for b, (shift, mask) in enumerate(_bands(params.lsh_bands))])
    banded = h.select("h", F.explode(keys).alias("bk")).select("h", "bk.band", "bk.key")
    sizes = banded.groupBy("band", "key").agg(F.count("*").alias("n")).where("n > 1").localCheckpoint()
    live = banded.join(sizes.where(F.col("n") <= params.max_bucket).select("band", "key"), ["band", "key"])
    a, b = live.alias("a"), live.alias("b")
    candidates = (a.join(b, (F.col("a.band") == F.col("b.band")) & (F.col("a.key") == F.col("b.key"))
                         & (F.col("a.h") < F.col("b.h")))
                  .select(F.col("a.h").alias("h1"), F.col("b.h").alias("h2")).distinct()
                  .withColumn("d", F.bit_count(F.col("h1").bitwiseXOR(F.col("h2")))).localCheckpoint())
    big, cand, matched = (
        sizes.agg(F.sum((F.col("n") > params.max_bucket).cast("int"))).first()[0] or 0,
        *candidates.agg(F.count("*"), F.sum((F.col("d") <= params.near_duplicate_distance).cast("int"))).first())
    stats.skipped_buckets, stats.candidate_pairs, stats.matches = big, cand, matched or 0
    if big:
        log.warning("near duplicates: %d band buckets over %d hashes skipped (quality.max_bucket)",
                    big, params.max_bucket)
    return candidates.where(F.col("d") <= params.near_duplicate_distance).select("h1", "h2")


def _union_find(edges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(vertex, smallest vertex of its component) for every vertex of a small edge list."""
    parent: dict[int, int] = {}

    def root(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for u, v in edges:
        ru, rv = root(u), root(v)
        if ru != rv:
            parent[max(ru, rv)] = min(ru, rv)
    return [(x, root(x)) for x in parent]


def components(spark, edges: DataFrame, params: QualityConf, stats: DedupStats) -> DataFrame:
    """(h, label): every vertex of the edge list with the smallest vertex of its connected component.

    Up to params.driver_cluster_edges edges (true near duplicates are few) are joined on the driver by
    union-find; more are joined in Spark by label propagation, one round per step of the diameter.
    """
    schema = "h bigint, label bigint"
    if stats.matches <= params.driver_cluster_edges:
        found = _union_find([(r.h1, r.h2) for r in edges.collect()])
        stats.rounds = 0
        return spark.createDataFrame(found, schema)
    both = edges.select("h1", "h2").union(edges.select(F.col("h2").alias("h1"), F.col("h1").alias("h2")))
    both = both.localCheckpoint()
    labels = (both.groupBy("h1").agg(F.min("h2").alias("m"))
              .select(F.col("h1").alias("h"), F.least("h1", "m").alias("label")).localCheckpoint())
    for round_ in range(1, params.max_cluster_rounds + 1):
        spread = (both.join(labels, both.h1 == labels.h).groupBy(F.col("h2").alias("h"))
                  .agg(F.min("label").alias("seen")))
        new = (labels.join(spread, "h", "left")
               .select("h", F.least("label", F.coalesce("seen", "label")).alias("label")).localCheckpoint())
        changed = new.join(labels.withColumnRenamed("label", "old"), "h").where("label <> old").count()
        labels = new
        stats.rounds = round_
        if not changed:
            return labels
    log.warning("near duplicates: clusters still growing after %d rounds (quality.max_cluster_rounds)",
                params.max_cluster_rounds)
    return labels


def near_clusters(pairs: DataFrame, images: DataFrame, params: QualityConf, stats: DedupStats) -> DataFrame:
    """One row per pair whose image has a near duplicate among the other images.

    Columns as exact_groups; group_id is the cluster's lowest image_sha256 and distance is the Hamming
    distance of the pair's image hash to that image's.
    """
    imgs = images.select("image_sha256", "image_dhash").dropDuplicates(["image_sha256"])
    labels = components(pairs.sparkSession, near_matches(imgs, params, stats), params, stats)
    # Different images with one and the same hash are near duplicates too (distance 0).
    labelled = (imgs.join(labels.withColumnRenamed("h", "image_dhash"), "image_dhash", "left")
                .withColumn("label", F.coalesce("label", "image_dhash")))
    clusters = (labelled.groupBy("label")
                .agg(F.count("*").alias("group_images"),
                     F.min(F.struct("image_sha256", "image_dhash")).alias("root"))
                .where("group_images > 1"))
    members = labelled.join(clusters, "label").select(
        "image_sha256", "group_images", F.col("root.image_sha256").alias("group_id"),
        F.bit_count(F.col("image_dhash").bitwiseXOR(F.col("root.image_dhash"))).alias("distance"))
    uniq = pairs.select(*PAIR_COLUMNS).dropDuplicates(["pair_id"])
    in_cluster = uniq.join(members, "image_sha256")
    sizes = in_cluster.groupBy("group_id").agg(F.count("*").alias("group_pairs"))
    return in_cluster.join(sizes, "group_id").select(*PAIR_COLUMNS, "group_id", "group_pairs",
                                                     "group_images", "distance")


def find(pairs: DataFrame, images: DataFrame, params: QualityConf) -> tuple[DataFrame, DedupStats]:
    """Rows of the duplicates table (without run id and time): exact groups, then near clusters."""
    stats = DedupStats()
    exact = exact_groups(pairs).withColumn("group_kind", F.lit("exact"))
    near = near_clusters(pairs, images, params, stats).withColumn("group_kind", F.lit("near"))
    rows = exact.unionByName(near).withColumn("distance", F.col("distance").cast("int")).localCheckpoint()
    counts = {r["group_kind"]: r for r in rows.groupBy("group_kind").agg(
        F.countDistinct("group_id").alias("groups"), F.count("*").alias("pairs"),
        F.countDistinct("image_sha256").alias("images")).collect()}
    if "exact" in counts:
        stats.exact_groups, stats.exact_pairs = counts["exact"]["groups"], counts["exact"]["pairs"]
    if "near" in counts:
        stats.near_clusters, stats.near_pairs = counts["near"]["groups"], counts["near"]["pairs"]
        stats.near_images = counts["near"]["images"]
    return rows, stats
