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
from pyspark.sql.types import IntegerType, LongType, StringType, StructField, StructType

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
    search: str = ""              # how the near matches were found: in full (why) or incremental (new hashes)
    built: str = ""               # whether the groups were built anew (why) or kept


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


def scheme(params: QualityConf) -> str:
    """The settings stored band keys and matches were found under: when one changes, they are found anew."""
    return f"bands={params.lsh_bands} k={params.near_duplicate_distance} max_bucket={params.max_bucket}"


def banded(hashes: DataFrame, params: QualityConf) -> DataFrame:
    """(h, band, key, scheme): every distinct hash of `hashes` (column image_dhash) once per band."""
    h = hashes.select(F.col("image_dhash").alias("h")).where(F.col("h").isNotNull()).distinct()
    keys = F.array(*[F.struct(F.lit(b).alias("band"),
                              (F.shiftrightunsigned(F.col("h"), shift).bitwiseAND(F.lit(mask))).alias("key"))
                     for b, (shift, mask) in enumerate(_bands(params.lsh_bands))])
    return (h.select("h", F.explode(keys).alias("bk"))
            .select("h", F.col("bk.band").cast("int").alias("band"), F.col("bk.key").alias("key"),
                    F.lit(scheme(params)).alias("scheme")))


def _matches(a: DataFrame, b: DataFrame, params: QualityConf, stats: DedupStats) -> DataFrame:
    """(h1, h2, d) with h1 < h2 for the hashes of `a` and `b` that share a bucket (band, key): the
    candidates are counted in stats, the matches (d <= k) returned, checkpointed. a and b the same frame:
    each unordered pair is joined once."""
    same = a is b
    a, b = a.alias("a"), b.alias("b")
    other = F.col("a.h") < F.col("b.h") if same else F.col("a.h") != F.col("b.h")
    candidates = (a.join(b, (F.col("a.band") == F.col("b.band")) & (F.col("a.key") == F.col("b.key")) & other)
                  .select(F.least("a.h", "b.h").alias("h1"), F.greatest("a.h", "b.h").alias("h2")).distinct()
                  .withColumn("d", F.bit_count(F.col("h1").bitwiseXOR(F.col("h2"))).cast("int")).localCheckpoint())
    cand, matched = candidates.agg(F.count("*"), F.sum((F.col("d") <= params.near_duplicate_distance)
                                                      .cast("int"))).first()
    stats.candidate_pairs, stats.matches = cand, matched or 0
    return candidates.where(F.col("d") <= params.near_duplicate_distance)


def _skipped(big: int, params: QualityConf, stats: DedupStats) -> None:
    stats.skipped_buckets = big
    if big:
        log.warning("near duplicates: %d band buckets over %d hashes skipped (quality.max_bucket)",
                    big, params.max_bucket)


def near_matches(hashes: DataFrame, params: QualityConf, stats: DedupStats) -> DataFrame:
    """Pairs of distinct hashes (h1 < h2, with their distance d) at Hamming distance <=
    params.near_duplicate_distance, found in banded buckets (params.lsh_bands; buckets over
    params.max_bucket are skipped and counted)."""
    return banded_matches(banded(hashes, params), params, stats)


def banded_matches(bands: DataFrame, params: QualityConf, stats: DedupStats) -> DataFrame:
    """near_matches of hashes already banded (rows of banded())."""
    sizes = bands.groupBy("band", "key").agg(F.count("*").alias("n")).where("n > 1").localCheckpoint()
    _skipped(sizes.agg(F.sum((F.col("n") > params.max_bucket).cast("int"))).first()[0] or 0, params, stats)
    live = bands.join(sizes.where(F.col("n") <= params.max_bucket).select("band", "key"), ["band", "key"])
    return _matches(live, live, params, stats)


def new_matches(stored: DataFrame, new: DataFrame, params: QualityConf,
                stats: DedupStats) -> DataFrame | None:
    """The matches that hashes new to the lake add, found against the stored band keys of every earlier
    hash (`stored`, `new`: rows of banded()): each new hash is compared with the hashes, stored or new,
    that share one of its buckets. The same pairs a full run compares with a new hash, so the stored
    matches plus these equal a full run's matches, except where a new hash pushes a bucket past
    params.max_bucket (a full run skips it, dropping the matches it gave before): then None, and the
    caller runs in full. stats.skipped_buckets counts the oversized buckets among those the new hashes
    fall into only."""
    new = new.localCheckpoint()
    added = new.groupBy("band", "key").agg(F.count("*").alias("added"))
    had = stored.join(added.select("band", "key"), ["band", "key"]).groupBy("band", "key").agg(
        F.count("*").alias("had"))
    sizes = (added.join(had, ["band", "key"], "left").fillna(0, ["had"])
             .withColumn("n", F.col("had") + F.col("added")).localCheckpoint())
    crossed, big = sizes.agg(
        F.sum(((F.col("had") <= params.max_bucket) & (F.col("n") > params.max_bucket)).cast("int")),
        F.sum((F.col("n") > params.max_bucket).cast("int"))).first()
    if crossed:
        log.info("near duplicates: %d bucket(s) grew past quality.max_bucket with the new hashes", crossed)
        return None
    _skipped(big or 0, params, stats)
    live = sizes.where((F.col("n") > 1) & (F.col("n") <= params.max_bucket)).select("band", "key")
    mine = new.join(live, ["band", "key"])
    theirs = stored.join(live, ["band", "key"]).select(*new.columns).unionByName(mine)
    return _matches(mine, theirs, params, stats)


def new_matches_local(stored: DataFrame, hashes: list[int], params: QualityConf, stats: DedupStats,
                      limit: int) -> tuple[str, list[int], list[tuple], list[tuple]]:
    """new_matches on the driver, for hashes few enough to hold there: one lookup of the stored band keys in
    the buckets of `hashes` (which also tells which of them are stored already), then the bucket sizes, the
    candidates and their distances in Python, exactly as new_matches counts and finds them.
    Returns (what, new hashes, matches (h1, h2, d), their band rows (rows of banded())): what is "ok",
    "crossed" (a bucket grew past params.max_bucket: search anew) or "big" (the lookup holds more than
    `limit` rows, or a one-band scheme whose keys are the whole 64 bits: Spark's new_matches then)."""
    spark = stored.sparkSession
    cuts = _bands(params.lsh_bands)
    if len(cuts) < 2:
        return "big", [], [], []
    full = (1 << 64) - 1

    def keys(h: int) -> list[tuple[int, int]]:
        return [(b, ((h & full) >> shift) & mask) for b, (shift, mask) in enumerate(cuts)]

    wanted = sorted({bk for h in hashes for bk in keys(h)})
    lookup = spark.createDataFrame(wanted, "band int, key bigint")
    found = (stored.join(F.broadcast(lookup), ["band", "key"], "left_semi").select("h", "band", "key")
             .limit(limit + 1).collect())
    if len(found) > limit:
        return "big", [], [], []
    known = {h for h, band, _ in found if band == 0}
    new = sorted(set(hashes) - known)
    rows = [(h, b, k, scheme(params)) for h in new for b, k in keys(h)]
    buckets: dict[tuple[int, int], list[int]] = {}
    for h, b, k, _ in rows:
        buckets.setdefault((b, k), []).append(h)
    had: dict[tuple[int, int], list[int]] = {}
    for h, b, k in found:
        if (b, k) in buckets:
            had.setdefault((b, k), []).append(h)
    sizes = {bk: len(had.get(bk, [])) + len(mine) for bk, mine in buckets.items()}
    if any(len(had.get(bk, [])) <= params.max_bucket < n for bk, n in sizes.items()):
        return "crossed", new, [], []
    _skipped(sum(n > params.max_bucket for n in sizes.values()), params, stats)
    pairs = set()
    for bk, mine in buckets.items():
        if 1 < sizes[bk] <= params.max_bucket:
            theirs = had.get(bk, []) + mine
            pairs |= {(min(a, b), max(a, b)) for a in mine for b in theirs if a != b}
    scored = [(a, b, ((a ^ b) & full).bit_count()) for a, b in sorted(pairs)]
    matches = [m for m in scored if m[2] <= params.near_duplicate_distance]
    stats.candidate_pairs, stats.matches = len(scored), len(matches)
    return "ok", new, matches, rows


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


def near_clusters(pairs: DataFrame, images: DataFrame, params: QualityConf, stats: DedupStats,
                  matches: DataFrame | None = None) -> DataFrame:
    """One row per pair whose image has a near duplicate among the other images.

    matches: the (h1, h2) matches of every hash of `images` (stored ones, in an incremental run); None:
    found here in full. Columns as exact_groups; group_id is the cluster's lowest image_sha256 and
    distance is the Hamming distance of the pair's image hash to that image's.
    """
    imgs = images.select("image_sha256", "image_dhash").dropDuplicates(["image_sha256"])
    if matches is None:
        matches = near_matches(imgs, params, stats)
    else:
        stats.matches = matches.count()
    labels = components(pairs.sparkSession, matches, params, stats)
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


def find(pairs: DataFrame, images: DataFrame, params: QualityConf, matches: DataFrame | None = None,
         stats: DedupStats | None = None) -> tuple[DataFrame, DedupStats]:
    """Rows of the duplicates table (without run id and time): exact groups, then near clusters (from
    `matches`, every near match of the images' hashes, when given; found here when None)."""
    stats = stats or DedupStats()
    exact = exact_groups(pairs).withColumn("group_kind", F.lit("exact"))
    near = near_clusters(pairs, images, params, stats, matches).withColumn("group_kind", F.lit("near"))
    rows = exact.unionByName(near).withColumn("distance", F.col("distance").cast("int")).localCheckpoint()
    return rows, counted(rows, stats)


def touched(pairs: DataFrame, images: DataFrame, params: QualityConf, matches: DataFrame, shas: set[str],
            hashes: set[int], stats: DedupStats, driver_rows: int | None = None
            ) -> tuple[DataFrame, DataFrame, DataFrame] | None:
    """The rows find() gives for every group a change touches, found over those groups' pairs and images only:
    (rows, their scope: the shas (image_sha256) and hashes (h) whose stored rows they replace, see in_scope).

    shas, hashes: the image shas and hashes of every pair row inserted, deleted or moved (both sides) and of
    every image added since the stored rows were found; `matches` every near match now, a superset of the
    ones the stored rows were found with (stored matches plus the new ones: new_matches). Exact groups are
    keyed by sha, so the groups of `shas` are complete. A near cluster is a connected component of the
    matches (or one hash, for images sharing it): the scope's hashes are every hash of a component holding
    one of `hashes`; a component only grows as matches are added, so every stored cluster that holds a
    changed image or pair lies within it. The components are joined on the driver (union-find); None when
    the matches are more than params.driver_cluster_edges (then Spark's to find, over every hash: find()).
    The groups themselves are formed on the driver from the images and pairs rows in scope (two lookups,
    _touched_rows) when those are at most driver_rows (default params.driver_cluster_edges), else in Spark."""
    spark = pairs.sparkSession
    edges = [(r.h1, r.h2) for r in matches.select("h1", "h2").collect()]
    if len(edges) > params.driver_cluster_edges:
        return None
    label = dict(_union_find(edges))
    hit = {label.get(h, h) for h in hashes}
    scope = hashes | {h for h, lab in label.items() if lab in hit}
    in_scope_hashes = spark.createDataFrame([(h,) for h in sorted(scope)], "h bigint")
    sha_keys = spark.createDataFrame([(s,) for s in sorted(shas)], "image_sha256 string")
    imgs = images.join(F.broadcast(in_scope_hashes.withColumnRenamed("h", "image_dhash")), "image_dhash", "left_semi")
    small = _touched_rows(pairs, imgs, label, shas, params.driver_cluster_edges if driver_rows is None else driver_rows)
    if small is not None:
        return small, sha_keys, in_scope_hashes
    near_pairs = pairs.join(imgs.select("image_sha256"), "image_sha256", "left_semi")
    found = stats.matches
    near = near_clusters(near_pairs, imgs, params, stats, spark.createDataFrame(
        [(a, b) for a, b in edges if a in scope], "h1 bigint, h2 bigint"))
    stats.matches = found
    exact = exact_groups(pairs.join(F.broadcast(sha_keys), "image_sha256", "left_semi"))
    rows = (exact.withColumn("group_kind", F.lit("exact"))
            .unionByName(near.withColumn("group_kind", F.lit("near")))
            .withColumn("distance", F.col("distance").cast("int")).localCheckpoint())
    return rows, sha_keys, in_scope_hashes


def _touched_rows(pairs: DataFrame, imgs: DataFrame, label: dict[int, int], shas: set[str], limit: int
                  ) -> DataFrame | None:
    """touched()'s rows formed on the driver, as exact_groups and near_clusters form them: exact groups of the
    pairs of `shas`; near clusters of the images in scope (`imgs`), labelled by `label` (union-find over the
    matches; a hash without a match is its own label, so images sharing one hash cluster at distance 0).
    Two lookups: the images in scope, then the pairs of their shas and of `shas`. None when either holds
    more than `limit` rows (a change touching a group that large is left to Spark)."""
    spark = pairs.sparkSession
    found = imgs.select("image_sha256", "image_dhash").limit(limit + 1).collect()
    if len(found) > limit:
        return None
    image_hash: dict[str, int] = {}
    for sha, h in found:
        if sha is not None:
            image_hash.setdefault(sha, h)
    wanted = sorted({s for s in shas if s is not None} | set(image_hash))
    keys = spark.createDataFrame([(s,) for s in wanted], "image_sha256 string")
    cols = pairs.select(*PAIR_COLUMNS)
    rows = cols.join(F.broadcast(keys), "image_sha256", "left_semi").select(*PAIR_COLUMNS).limit(limit + 1).collect()
    if len(rows) > limit:
        return None
    uniq: dict[str, tuple] = {}
    for r in rows:
        uniq.setdefault(r[0], tuple(r))
    sha_at = PAIR_COLUMNS.index("image_sha256")
    by_sha: dict[str, list[tuple]] = {}
    for r in uniq.values():
        by_sha.setdefault(r[sha_at], []).append(r)
    out = [(*r, sha, len(group), 1, 0, "exact") for sha in sorted(s for s in shas if s is not None)
           for group in [by_sha.get(sha, [])] if len(group) > 1 for r in group]
    clusters: dict[int, list[tuple[str, int]]] = {}
    for sha, h in image_hash.items():
        if h is not None:
            clusters.setdefault(label.get(h, h), []).append((sha, h))
    for members in clusters.values():
        if len(members) < 2:
            continue
        root_sha, root_h = min(members)
        in_cluster = [(r, h) for sha, h in members for r in by_sha.get(sha, [])]
        out += [(*r, root_sha, len(in_cluster), len(members), ((h ^ root_h) & (2**64 - 1)).bit_count(), "near")
                for r, h in in_cluster]
    schema = StructType(list(cols.schema.fields) + [
        StructField("group_id", StringType()), StructField("group_pairs", LongType()),
        StructField("group_images", LongType()), StructField("distance", IntegerType()),
        StructField("group_kind", StringType())])
    return spark.createDataFrame(out, schema)


def in_scope(stored: DataFrame, shas: DataFrame, hashes: DataFrame) -> DataFrame:
    """The stored duplicates rows that touched()'s rows replace: exact rows of its shas, near rows of its
    hashes."""
    exact = stored.where("group_kind = 'exact'").join(F.broadcast(shas), "image_sha256", "left_semi")
    near = stored.where("group_kind = 'near'").join(F.broadcast(hashes.withColumnRenamed("h", "image_dhash")),
                                                   "image_dhash", "left_semi")
    return exact.unionByName(near)


def counted(rows: DataFrame, stats: DedupStats) -> DedupStats:
    """stats with the groups, pairs and images of the duplicates rows `rows` counted."""
    counts = {r["group_kind"]: r for r in rows.groupBy("group_kind").agg(
        F.countDistinct("group_id").alias("groups"), F.count("*").alias("pairs"),
        F.countDistinct("image_sha256").alias("images")).collect()}
    if "exact" in counts:
        stats.exact_groups, stats.exact_pairs = counts["exact"]["groups"], counts["exact"]["pairs"]
    if "near" in counts:
        stats.near_clusters, stats.near_pairs = counts["near"]["groups"], counts["near"]["pairs"]
        stats.near_images = counts["near"]["images"]
    return stats
