"""Export's second step: pairs -> the user's predicate (--where, checked before any work) -> score threshold ->
a non-blank text -> dedup (the lowest pair_id of each exact group or near cluster among what is left),
counted step by step.

A --where sees the pair's columns, its model's scores, `figure_type`, and where the lake has them the text
signals (text_signals' columns, plus caption_key_papers, boilerplate, caption_non_english,
recaption_non_english: as the pair_signals view has them) and the pseudo-perplexities of the fluency model
that scored the most pairs at the pinned version (ppl_caption, ppl_recaption, fluency_status; null for
a pair it did not score, so `ppl_recaption < 100` keeps only scored pairs)."""

from __future__ import annotations

from s1mmalign.export.snapshot import first_line, read
from s1mmalign.export.spec import ExportError, Spec
from s1mmalign.lake.root import Lake


def candidates(spark, lake: Lake, spec: Spec, versions: dict[str, int]):
    """Every pair with what the filters and the samples need: its model's scores (score_caption,
    score_recaption, score_status when --model), all models' scores, duplicate groups."""
    from pyspark.sql import functions as F

    from s1mmalign.lake import schemas

    df = (read(spark, lake, "pairs", versions).drop("row_hash", "ingest_run_id", "ingested_at")
          .withColumn("figure_type", F.expr(schemas.FIGURE_TYPE_SQL)))
    if "text_signals" in versions:
        df = df.join(signals(spark, lake, versions, df, spec.boilerplate_papers), "pair_id", "left")
    if "fluency_scores" in versions:
        fluency = read(spark, lake, "fluency_scores", versions)
        top = fluency.groupBy("model").count().orderBy(F.desc("count"), "model").first()
        if top is not None:
            df = df.join(fluency.where(F.col("model") == top["model"]).select(
                "pair_id", "ppl_caption", "ppl_recaption", F.col("status").alias("fluency_status")), "pair_id", "left")
    clip_scores = read(spark, lake, "clip_scores", versions) if "clip_scores" in versions else None
    if spec.model:
        mine = (clip_scores.where(F.col("model") == spec.model)
                .select("pair_id", "score_caption", "score_recaption", F.col("status").alias("score_status")))
        df = df.join(mine, "pair_id", "left")
    if clip_scores is not None:
        scores = (clip_scores.where(F.col("model") == spec.model if spec.model else F.lit(True))
                  .groupBy("pair_id").agg(F.array_sort(F.collect_list(F.struct(
                      "model", "score_caption", "score_recaption", "status"))).alias("scores")))
        df = df.join(scores, "pair_id", "left")
    else:
        df = df.withColumn("scores", F.lit(None).cast(
            "array<struct<model:string,score_caption:double,score_recaption:double,status:string>>"))
    if "duplicates" in versions:
        dup = read(spark, lake, "duplicates", versions)
        for kind in ("exact", "near"):
            df = df.join(dup.where(F.col("group_kind") == kind)
                         .select("pair_id", F.col("group_id").alias(f"{kind}_group")), "pair_id", "left")
    else:
        df = (df.withColumn("exact_group", F.lit(None).cast("string"))
              .withColumn("near_group", F.lit(None).cast("string")))
    return df


# Columns only a --where reads: dropped before the shards are planned and written.
FILTER_ONLY = ("figure_type", "caption_key_papers", "boilerplate", "caption_non_english", "recaption_non_english",
               "ppl_caption", "ppl_recaption", "fluency_status")


def signal_columns() -> list[str]:
    from s1mmalign.lake import schemas

    keys = {"pair_id", "discipline", "arxiv_id", "row_hash", "version", "computed_at"}
    return [c for c in schemas.table("text_signals").names if c not in keys]


def signals(spark, lake: Lake, versions: dict[str, int], pairs, boilerplate_papers: int):
    """text_signals at its pinned version with the boilerplate count of each caption key (papers)."""
    from pyspark.sql import functions as F

    s = read(spark, lake, "text_signals", versions).select("pair_id", *signal_columns())
    papers = (s.join(pairs.select("pair_id", "paper_id"), "pair_id").where(F.col("caption_key").isNotNull())
              .groupBy("caption_key").agg(F.countDistinct("paper_id").alias("caption_key_papers")))
    return (s.join(papers, "caption_key", "left")
            .withColumn("boilerplate", F.coalesce(F.col("caption_key_papers") >= F.lit(boilerplate_papers),
                                                  F.lit(False)))
            .withColumn("caption_non_english", F.coalesce(F.col("caption_lang") != "en", F.lit(False)))
            .withColumn("recaption_non_english", F.coalesce(F.col("recaption_lang") != "en", F.lit(False))))


# What a --where may not use: it is an expression over the selection's columns, evaluated the same way on
# every run (--from-manifest and resume rely on it), that reads nothing else and runs no code of its own.
_SUBQUERY_NODES = {"Exists", "ListQuery", "UnresolvedRelation", "UnresolvedTableValuedFunction", "UnresolvedStar"}
_REFUSED_FUNCTIONS = {
    "java_method", "reflect", "try_reflect",                                        # calls into the JVM
    "raise_error", "assert_true",                                                    # fail the job on purpose
    "rand", "randn", "random", "uuid", "shuffle", "randstr", "uniform",              # another answer each run
    "current_date", "current_timestamp", "now", "localtimestamp", "curdate", "current_timezone", "current_user",
    "user", "session_user", "current_catalog", "current_database", "current_schema", "version",
    "input_file_name", "input_file_block_start", "input_file_block_length", "spark_partition_id",
    "monotonically_increasing_id",
}


MAX_WHERE_CHARS, MAX_WHERE_NODES = 100_000, 20_000


def check_where(spark, where: str) -> None:
    """ExportError (one line) unless `where` parses as one Spark SQL expression that reads no table (no
    subquery, no table function) and calls no reflective, time- or run-dependent function; whether its
    columns exist and it is deterministic is checked against the selection (_predicate)."""
    if len(where) > MAX_WHERE_CHARS:
        raise ExportError(f"--where of {len(where)} characters: at most {MAX_WHERE_CHARS}")
    try:
        root = spark._jsparkSession.sessionState().sqlParser().parseExpression(where)
    except Exception as exc:
        raise ExportError(f"--where {where[:200]!r}: {first_line(exc) or 'not one SQL expression'}") from None
    stack, seen = [root], 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > MAX_WHERE_NODES:
            raise ExportError(f"--where {where[:200]!r}: over {MAX_WHERE_NODES} terms; say it shorter")
        kind = node.getClass().getSimpleName()
        if kind in _SUBQUERY_NODES or kind.endswith("Subquery"):     # Scalar-, In-, LateralSubquery
            raise ExportError(f"--where {where[:200]!r}: a subquery or table reference ({kind}) is not allowed: the "
                              f"condition is an expression over the selection's columns")
        if kind == "UnresolvedFunction":
            parts = node.nameParts()
            name = ".".join(parts.apply(i) for i in range(parts.size()))
            if parts.size() != 1 or name.lower() in _REFUSED_FUNCTIONS or (
                    name.lower() == "unix_timestamp" and node.arguments().size() == 0):
                raise ExportError(f"--where {where[:200]!r}: function {name} is not allowed (the condition must give "
                                  f"the same answer on every run and read nothing but the selection's columns)")
        children = node.children()
        stack += [children.apply(i) for i in range(children.size())]


def _predicate(df, where: str):
    """The user's predicate as a Column, checked against df now (one line, before any work)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import BooleanType

    check_where(df.sparkSession, where)
    try:
        cond = F.expr(where)
        checked = df.select(cond.alias("_w"))
        kind = checked.schema[0].dataType
        deterministic = checked._jdf.queryExecution().analyzed().expressions().apply(0).deterministic()
    except Exception as exc:
        raise ExportError(f"--where {where!r}: {first_line(exc)}") from None
    if not isinstance(kind, BooleanType):
        raise ExportError(f"--where {where!r} is a {kind.simpleString()}, not a condition")
    if not deterministic:
        raise ExportError(f"--where {where!r} is not deterministic: an export must select the same pairs on every run")
    return cond


def _blank(col):
    from pyspark.sql import functions as F

    return col.isNull() | (F.trim(col) == "")


def select(df, spec: Spec):
    """Every candidate with the step flags `_ok_where`, `_ok_score`, `_ok_text` (each including the ones
    before) and `_keep` (passed every step and first of its duplicate group)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    ok_where = F.coalesce(_predicate(df, spec.where), F.lit(False)) if spec.where else F.lit(True)
    ok_score = (F.coalesce(F.col(f"score_{spec.score_field}") >= F.lit(spec.min_score), F.lit(False))
                if spec.min_score is not None else F.lit(True))
    if spec.text == "both":
        ok_text = ~(_blank(F.col("caption")) & _blank(F.col("recaption")))
    else:
        ok_text = ~_blank(F.col(spec.text))
    df = (df.withColumn("_ok_where", ok_where).withColumn("_ok_score", ok_where & ok_score)
          .withColumn("_ok_text", F.col("_ok_score") & ok_text))
    if spec.dedup == "none":
        return df.withColumn("_keep", F.col("_ok_text"))
    group = (F.coalesce("exact_group", "pair_id") if spec.dedup == "exact"
             else F.coalesce(F.concat(F.lit("near:"), "near_group"), F.concat(F.lit("exact:"), "exact_group"),
                             "pair_id"))
    first = F.row_number().over(Window.partitionBy("_group").orderBy("pair_id"))
    passed = df.where("_ok_text").withColumn("_group", group).withColumn("_keep", first == 1).drop("_group")
    failed = df.where("NOT _ok_text").withColumn("_keep", F.lit(False))
    return passed.unionByName(failed)


def counts(selected) -> dict:
    """Pairs read and kept by each step, and the kept ones per discipline and source (one Spark job)."""
    from pyspark.sql import functions as F

    flags = ("_ok_where", "_ok_score", "_ok_text", "_keep")
    rows = selected.groupBy("discipline", "source").agg(
        F.count("*").alias("pairs"), *(F.sum(F.col(f).cast("long")).alias(f) for f in flags)).collect()
    names = {"pairs": "pairs", "_ok_where": "where", "_ok_score": "min_score", "_ok_text": "text", "_keep": "dedup"}
    steps = {step: sum(int(r[col] or 0) for r in rows) for col, step in names.items()}
    by_discipline: dict[str, int] = {}
    by_source: dict[str, int] = {}
    for r in rows:
        if r["_keep"]:
            by_discipline[r["discipline"]] = by_discipline.get(r["discipline"], 0) + int(r["_keep"])
            by_source[r["source"]] = by_source.get(r["source"], 0) + int(r["_keep"])
    return {"steps": steps, "by_discipline": dict(sorted(by_discipline.items())),
            "by_source": dict(sorted(by_source.items()))}
