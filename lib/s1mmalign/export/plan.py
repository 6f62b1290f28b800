"""Export's third step: the chosen pairs in order, cut into shards of about the shard size by their estimated
bytes: a prefix sum by buckets (no single task sees every row), shard = floor(bytes before the pair / shard
size). Storage order (the default): as the images table stores the images (file, row: by discipline, then as
ingested), the way a bare reader of the files would write them; buckets are the table's files. pair_id
order: by pair_id, a sha256 prefix, so every shard is a well-mixed sample of the selection; buckets are
pair_id prefixes."""

from __future__ import annotations

from s1mmalign.export.spec import TAR_OVERHEAD, ExportError, Spec
from s1mmalign.lake import image_files
from s1mmalign.lake.root import Lake


def check_storage_order(spark, lake: Lake) -> None:
    """ExportError unless the images table's files can be read as plain Parquet (image_files.plain_parquet)."""
    if not image_files.plain_parquet(lake.properties(spark, "images")):
        raise ExportError("--order storage reads the images table's files directly, which needs a table without "
                          "deletion vectors and column mapping; this one has them: use --order pair_id")


def plan(spark, chosen, images, spec: Spec):
    """chosen (the kept pairs) with `shard` and `_est` (estimated bytes in a shard), plus `_file` and `_row`
    (where the image is) in storage order, and the shards as [(index, samples)] in order."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    text_cols = ["caption", "recaption"] if spec.text == "both" else [spec.text]
    text_bytes = sum((F.coalesce(F.octet_length(c), F.lit(0)) for c in text_cols), F.lit(0))
    if spec.image == "original":
        img_bytes = F.col("image_bytes")
    else:
        sizes = images.select("image_sha256", F.octet_length("thumbnail").alias("_thumb_bytes"))
        chosen = chosen.join(sizes, "image_sha256", "left")
        img_bytes = F.coalesce(F.col("_thumb_bytes"), F.lit(0))
    chosen = chosen.withColumn("_est", (img_bytes + text_bytes + F.lit(TAR_OVERHEAD)).cast("long"))
    if spec.order == "storage":
        # a pair whose image has no row gets file '' (first): its shard task finds no image and comes up short
        chosen = (chosen.join(image_files.locations(spark, images), "image_sha256", "left")
                  .withColumn("_file", F.coalesce("_file", F.lit(""))).withColumn("_bucket", F.col("_file")))
        within = ("_row", "pair_id")
    else:
        chosen = chosen.withColumn("_bucket", F.substring("pair_id", 1, 3))
        within = ("pair_id",)
    sums = chosen.groupBy("_bucket").agg(F.sum("_est").alias("_b")).collect()
    offsets, total = [], 0
    for row in sorted(sums, key=lambda r: r["_bucket"]):
        offsets.append((row["_bucket"], total))
        total += row["_b"]
    if not offsets:
        return chosen.withColumn("shard", F.lit(0).cast("long")), []
    offset_df = spark.createDataFrame(offsets, "_bucket string, _offset long")
    before = F.coalesce(F.sum("_est").over(Window.partitionBy("_bucket").orderBy(*within)
                                           .rowsBetween(Window.unboundedPreceding, -1)), F.lit(0))
    planned = (chosen.join(F.broadcast(offset_df), "_bucket")
               .withColumn("shard", F.floor((F.col("_offset") + before) / F.lit(spec.shard_bytes)).cast("long"))
               .drop("_bucket", "_offset")).localCheckpoint()
    shards = [(r[0], r[1]) for r in planned.groupBy("shard").count().orderBy("shard").collect()]
    return planned, shards


def shard_name(index: int, spec: Spec) -> str:
    return f"shard-{index:06d}.{spec.suffix}"
