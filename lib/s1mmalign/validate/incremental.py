"""Incremental per-row validation: the checked frames of pairs and images kept as tables, re-checked only where
a change touches them, and the per-row expectations' lake-wide results aggregated from those tables.

validate's pairs and images suites run on frames of per-row checks (pipeline.checked_pairs, checked_images). A
full run computes them over the whole lake and stores them (checked_pairs, checked_images, narrow tables:
keys and check columns, no captions). A refresh re-checks only the rows whose checks may have changed since
the versions the stored rows hold (validate_state), which are exactly these (`touched`):

  checked_pairs   a pair inserted, deleted, or updated in its content, image, path or discipline (pairs'
                  change data feed); a pair whose image bytes gained a row in images (missing_image_row:
                  images only grows, _ImagesAdded tells its added rows or that rows may have gone); a pair
                  that joined or left an exact duplicate group (shares_image_bytes: `duplicates` at the
                  built version against now)
  checked_images  an image added (images' added files); an image that joined or left a near-duplicate
                  cluster (near_duplicate: `duplicates` then against now)

Every other check column is a function of the row alone, and of the settings in `settings_digest` (a change
of which re-checks everything). The uniqueness checks are not per-row; they are aggregated over the stored
table (`lake_results`), as are the means and the counts of every column expectation: one aggregation pass
over each narrow table (and one group-by per uniqueness expectation), the same numbers Great Expectations
gives on the whole frame (tests/test_validate.py compares them). That is the path above
quality.pandas_max_rows rows; up to it the stored tables go whole to the pandas engine (pipeline._checked). On
it, Great Expectations itself runs on the re-checked rows and a bounded sample of the stored rows some
expectation finds unexpected (unexpected_sample): their examples go to quality_results' details, and the
run's Data Docs pages show those rows (their counts are of those rows; quality_results holds the lake's).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from s1mmalign.config import Config
from s1mmalign.lake import delta_io
from s1mmalign.lake.root import Lake
from s1mmalign.validate import quality

log = logging.getLogger(__name__)

# Bump when checked_pairs or checked_images compute a column differently: stored rows are then re-checked.
CHECKS_VERSION = 1
TABLES = {"pairs": ("checked_pairs", "pair_id"), "images": ("checked_images", "image_sha256")}
INPUTS = ("pairs", "images", "duplicates")
# A pairs update that changes one of these can change its check columns (row_hash covers the line's content).
PAIR_INPUTS = ["pair_id", "row_hash", "source", "discipline", "image_path", "image_sha256"]


def settings_digest(cfg: Config, categories: list[str]) -> int:
    """A number (validate_state's version column) naming the settings the check columns depend on: layouts,
    arXiv sources, the fallback discipline, the taxonomy, CHECKS_VERSION."""
    spec = json.dumps([CHECKS_VERSION, dict(cfg.quality.layouts), sorted(cfg.ingest.arxiv_sources),
                       cfg.disciplines.get("fallback", "unknown"), sorted(categories)], sort_keys=True)
    return int(hashlib.sha256(spec.encode()).hexdigest()[:15], 16)


@dataclass
class Touched:
    pairs: DataFrame       # pair_id: rows of checked_pairs to compute again (or delete, where pairs has none)
    images: DataFrame      # image_sha256: rows of checked_images to compute again (or delete)
    how: str               # what was found, in words
    counts: dict[str, int]     # frame (pairs, images) -> keys


def touched(spark: SparkSession, lake: Lake, built: dict[str, int], now: dict[str, int],
            added: tuple[list[tuple[str, int]] | None, str]) -> tuple[Touched | None, str]:
    """The keys whose checks may differ from the stored rows, built from the inputs at `built` (validate_state)
    and now at `now` (both: pairs, images, duplicates versions, and settings); or (None, why the stored rows
    cannot be brought up to date: no record, other settings, a table older than recorded, the change feed or
    an old duplicates version gone, images rows that may have gone). added: the images rows added since
    built["images"] (pipeline._ImagesAdded.since)."""
    if set(built) != set(now):
        return None, "no record of the versions they hold"
    if built["settings"] != now["settings"]:
        return None, "the settings they were checked under changed"
    if any(built[t] > now[t] for t in INPUTS):
        return None, f"a table is older than the version they were checked at ({built} > {now})"
    pair_keys: list[DataFrame] = []
    image_keys: list[DataFrame] = []
    said = []
    if built["pairs"] < now["pairs"]:
        rows = delta_io.changes(spark, lake.path("pairs"), built["pairs"], now["pairs"], PAIR_INPUTS)
        if rows is None:
            return None, f"pairs' change data feed since version {built['pairs']} is not available"
        pair_keys.append(rows.select("pair_id"))
        said.append("pairs' changes")
    images, how = added
    if images is None:
        return None, f"images changed since version {built['images']}: {how}"
    if images:
        shas = spark.createDataFrame(sorted({(sha,) for sha, _ in images}), "image_sha256 string")
        image_keys.append(shas)
        pair_keys.append(lake.read(spark, "pairs").join(F.broadcast(shas) if len(images) <= 100_000 else shas,
                                                         "image_sha256", "left_semi").select("pair_id"))
        said.append(f"{len(images)} images added")
    if built["duplicates"] < now["duplicates"]:
        try:
            old = lake.read(spark, "duplicates", version=built["duplicates"])
            old.schema    # noqa: B018  (resolves the version: fails here when its log is gone)
        except Exception as exc:    # noqa: BLE001  (AnalysisException: a version vacuumed or its log gone)
            return None, f"duplicates at version {built['duplicates']} is gone ({str(exc).splitlines()[0][:120]})"
        new = lake.read(spark, "duplicates")
        for kind, key, out in (("exact", "pair_id", pair_keys), ("near", "image_sha256", image_keys)):
            a, b = (d.where(F.col("group_kind") == kind).select(key).distinct() for d in (old, new))
            out.append(a.subtract(b).unionByName(b.subtract(a)))
        said.append("duplicate groups changed")

    def union(frames: list[DataFrame], key: str) -> DataFrame:
        if not frames:
            return spark.createDataFrame([], f"{key} string")
        out = frames[0]
        for f in frames[1:]:
            out = out.unionByName(f)
        return out.distinct().localCheckpoint()

    pairs, images = union(pair_keys, "pair_id"), union(image_keys, "image_sha256")
    counts = {"pairs": pairs.count(), "images": images.count()}
    how = f"{counts['pairs']} pairs and {counts['images']} images re-checked ({', '.join(said) or 'no change'})"
    return Touched(pairs, images, how, counts), how


class Unsupported(Exception):
    """An expectation lake_results cannot aggregate: Great Expectations runs on the whole stored frame instead."""


MAP_TYPES = ("expect_column_values_to_be_null", "expect_column_values_to_not_match_regex",
             "expect_column_values_to_match_regex", "expect_column_values_to_be_in_set",
             "expect_column_values_to_be_between", "expect_column_values_to_be_unique",
             "expect_compound_columns_to_be_unique")
AGGREGATE_TYPES = ("expect_column_mean_to_be_between",)
KWARGS = {"column", "column_list", "regex", "value_set", "min_value", "max_value", "mostly"}


def _kwargs(exp: dict, params: dict) -> dict:
    out = {}
    for k, v in (exp.get("kwargs") or {}).items():
        if k not in KWARGS:
            raise Unsupported(f"{exp['meta']['name']}: argument {k}")
        out[k] = params[v["$PARAMETER"]] if isinstance(v, dict) and "$PARAMETER" in v else v
    return out


def supported(suite: quality.Suite, params: dict) -> bool:
    """Whether lake_results aggregates every expectation of `suite`."""
    try:
        for exp in suite.spec["expectations"]:
            if exp["type"] not in MAP_TYPES + AGGREGATE_TYPES:
                raise Unsupported(exp["type"])
            _kwargs(exp, params)
    except Unsupported:
        return False
    return True


def aggregated(suites: list[quality.Suite], frame: str, params: dict) -> list[quality.Suite]:
    """The suites of checked frame `frame` (pairs, images) whose results lake_results gives: not the schema
    suites (they check the table as stored), and only those whose every expectation it aggregates."""
    return [s for s in suites if s.table == frame and not s.name.startswith("schema.") and supported(s, params)]


def _unexpected(kind: str, col, kw: dict):
    """The condition on a non-null value that makes it unexpected, for a column map expectation."""
    if kind == "expect_column_values_to_not_match_regex":
        return col.rlike(kw["regex"])
    if kind == "expect_column_values_to_match_regex":
        return ~col.rlike(kw["regex"])
    if kind == "expect_column_values_to_be_in_set":
        return ~col.isin(list(kw["value_set"]))
    if kind == "expect_column_values_to_be_between":
        low = F.lit(False) if kw.get("min_value") is None else col < F.lit(kw["min_value"])
        high = F.lit(False) if kw.get("max_value") is None else col > F.lit(kw["max_value"])
        return low | high
    raise Unsupported(kind)


def _map_result(total: int, nonnull: int | None, unexpected: int, mostly: float) -> dict:
    """Great Expectations' map-expectation result for these counts (expectation._format_map_output and the
    _validate of ColumnMapExpectation, MulticolumnMapExpectation and ExpectColumnValuesToBeNull: `nonnull`
    None where every row counts)."""
    considered = total if nonnull is None else nonnull
    success = True if not total or not considered else (considered - unexpected) / considered >= mostly
    percent = None
    if total > 0:
        percent = unexpected / total * 100 if nonnull is None else (unexpected / nonnull * 100 if nonnull else None)
    return {"success": success, "element_count": total, "unexpected_count": unexpected, "unexpected_percent": percent}


def _unique_columns(kind: str, kw: dict) -> list[str]:
    return [kw["column"]] if kind == "expect_column_values_to_be_unique" else list(kw["column_list"])


def _present(cols: list[str]):
    """The rows a uniqueness expectation considers: a value present (compound: rows whose values are all
    missing are left out, Great Expectations' ignore_row_if default)."""
    cond = F.col(cols[0]).isNotNull()
    for c in cols[1:]:
        cond = cond | F.col(c).isNotNull()
    return cond


def lake_results(frame: DataFrame, suites: list[quality.Suite], params: dict) -> dict[str, dict]:
    """Every expectation of `suites` (all on `frame`, a stored checked table): result key (suite:expectation) ->
    success, element_count, unexpected_count, unexpected_percent, observed_value, as Great Expectations reports
    them on the same frame. One aggregation for every count and mean, one group-by per uniqueness expectation.
    Raises Unsupported for a type or argument it does not aggregate."""
    aggs = [F.count(F.lit(1)).alias("_total")]
    plan = []
    for suite in suites:
        for exp in suite.spec["expectations"]:
            i, kind, kw = len(plan), exp["type"], _kwargs(exp, params)
            plan.append((f"{suite.name}:{exp['meta']['name']}", kind, kw))
            if kind in ("expect_column_values_to_be_unique", "expect_compound_columns_to_be_unique"):
                aggs.append(F.count(F.when(_present(_unique_columns(kind, kw)), 1)).alias(f"_n{i}"))
                continue
            col = F.col(kw["column"])
            if kind == "expect_column_mean_to_be_between":
                aggs.append(F.avg(col.cast("double")).alias(f"_m{i}"))
            elif kind == "expect_column_values_to_be_null":
                aggs.append(F.count(col).alias(f"_u{i}"))
            elif kind in MAP_TYPES:
                aggs += [F.count(col).alias(f"_n{i}"),
                         F.count(F.when(col.isNotNull() & _unexpected(kind, col, kw), 1)).alias(f"_u{i}")]
            else:
                raise Unsupported(kind)
    row = frame.agg(*aggs).first().asDict()
    total = row["_total"]
    out: dict[str, dict] = {}
    for i, (key, kind, kw) in enumerate(plan):
        mostly = float(kw.get("mostly", 1.0))
        if kind == "expect_column_mean_to_be_between":
            mean = row[f"_m{i}"]
            ok = mean is not None and (kw.get("min_value") is None or mean >= kw["min_value"]) and \
                (kw.get("max_value") is None or mean <= kw["max_value"])
            out[key] = {"success": ok, "element_count": None, "unexpected_count": None,
                        "unexpected_percent": None, "observed_value": mean}
            continue
        if kind == "expect_column_values_to_be_null":
            got = _map_result(total, None, row[f"_u{i}"], mostly)
        elif kind in ("expect_column_values_to_be_unique", "expect_compound_columns_to_be_unique"):
            cols = _unique_columns(kind, kw)
            dup = (frame.where(_present(cols)).groupBy(*cols).count().where("count > 1")
                   .agg(F.coalesce(F.sum("count"), F.lit(0)).alias("u")).first().u)
            got = _map_result(total, row[f"_n{i}"], int(dup), mostly)
        else:
            got = _map_result(total, row[f"_n{i}"], row[f"_u{i}"], mostly)
        got["observed_value"] = None
        out[key] = got
    return out


def unexpected_sample(stored: DataFrame, suites: list[quality.Suite], params: dict, limit: int) -> DataFrame:
    """Up to `limit` stored rows that some column expectation of `suites` finds unexpected (not the uniqueness
    and mean expectations, which no single row fails): shown to Great Expectations beside the re-checked
    rows, so that a run's examples and pages show the lake's standing problems, not only its new ones."""
    cond = F.lit(False)
    for suite in suites:
        for exp in suite.spec["expectations"]:
            kind, kw = exp["type"], _kwargs(exp, params)
            if kind == "expect_column_values_to_be_null":
                cond = cond | F.col(kw["column"]).isNotNull()
            elif kind in MAP_TYPES and "unique" not in kind:
                col = F.col(kw["column"])
                cond = cond | (col.isNotNull() & _unexpected(kind, col, kw))
    return stored.where(cond).limit(limit)


def merged(results: list[quality.Result], lake_wide: dict[str, dict], shown: int) -> list[quality.Result]:
    """The suite's results with the lake-wide numbers (lake_results) in place of those Great Expectations
    found on the `shown` rows (the re-checked rows and unexpected_sample's), whose examples stay as details."""
    out = []
    for r in results:
        got = lake_wide[r.key]
        observed = quality.observed_value(got["observed_value"], got["unexpected_count"], got["unexpected_percent"])
        details = r.details
        if details is not None:
            details = quality.json_text({"among_rows_shown": shown, **json.loads(details)})
        out.append(quality.Result(
            suite=r.suite, suite_group=r.suite_group, table_name=r.table_name, expectation=r.expectation,
            expectation_type=r.expectation_type, severity=r.severity, success=bool(got["success"]),
            observed_value=quality.json_text(observed), element_count=got["element_count"],
            unexpected_count=got["unexpected_count"], unexpected_percent=got["unexpected_percent"],
            details=details))
    return out


def results_without_rows(suite: quality.Suite, lake_wide: dict[str, dict]) -> list[quality.Result]:
    """The suite's results when no row was re-checked (Great Expectations has nothing to run on): the lake-wide
    numbers, no examples."""
    shells = [quality.Result(suite=suite.name, suite_group=suite.group, table_name=suite.table,
                           expectation=e["meta"]["name"], expectation_type=e["type"],
                           severity=e["severity"], success=True, observed_value=None, element_count=None,
                           unexpected_count=None, unexpected_percent=None, details=None)
            for e in suite.spec["expectations"]]
    return merged(shells, lake_wide, 0)
