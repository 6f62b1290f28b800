"""The validation pipeline: duplicates table, checked frames, Great Expectations suites, results, Data Docs.

Stages (each logs one line):
  dedup     exact groups and near-duplicate clusters -> duplicates: only the groups a change touches found
            again and merged (one commit), kept when nothing they are made of changed, replaced whole with
            --full or where the change cannot be told (_dedup, _changed_since_built)
  checks    pairs and images with the per-row facts the suites check (path layout, id agreement, image
            row present, shared bytes, near duplicate, ...), kept in checked_pairs and checked_images: only
            the rows a change touches checked again and merged (incremental.touched), every row with --full
            or where the change cannot be told (_checked)
  frames    the frames the suites run on (the checked rows; quarantine, source files, input lines, scores),
            converted or cached once for every suite
  suites    every suite in expectations/ on its frame (clip_scores only when that table exists); after an
            incremental check, the pairs and images suites' lake-wide numbers aggregated from the stored
            checks (incremental.lake_results)
  results   one row per expectation -> quality_results (the run id's rows replaced); Data Docs (this run's
            pages and the index)

Each defect is reported once, by the most specific check: a path that is absolute or has `..` is not
also judged for layout, and only a path that fits its layout is checked against its arXiv id.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import yaml
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from s1mmalign import resources
from s1mmalign.config import Config
from s1mmalign.lake import delta_io, schemas, storage
from s1mmalign.lake.root import Lake
from s1mmalign.lake.storage import remote
from s1mmalign.stages import Stage, new_run_id
from s1mmalign.validate import dedup, incremental, quality

log = logging.getLogger(__name__)

NEEDED = ("pairs", "images", "quarantine", "ingest_log")   # what run() reads; the job checks them first
OPTIONAL = ("clip_scores", "text_signals", "fluency_scores")   # read when they exist; their suites skipped if not
DEDUP_INPUTS = ("pairs", "images")     # what `duplicates` is built from (validate_state records their versions)
UNSAFE_PATH = r"^([/\\]|[A-Za-z]:)|(^|[/\\])\.\.([/\\]|$)"
ARXIV_FOLDER = r"^images/([0-9]{4})/([^/]+)\.tar\.gz/"


@dataclass
class Outcome:
    run_id: str
    results: list[quality.Result] = field(default_factory=list)
    stats: dedup.DedupStats | None = None
    docs_index: str | None = None        # the Data Docs index page, when built
    docs_note: str = ""                  # how they were built (offline, cdn), or why not
    checks: str = ""                     # how the per-row checks were brought up to date (incremental.py)
    seconds: float = 0.0

    @property
    def critical_failures(self) -> list[quality.Result]:
        return [r for r in self.results if not r.success and r.severity == "critical"]

    @property
    def warnings(self) -> list[quality.Result]:
        return [r for r in self.results if not r.success and r.severity != "critical"]

    def summary_line(self) -> str:
        """One line for the job's exit: which critical expectations failed, or that all passed."""
        def names(rs):
            return "; ".join(f"{r.key} ({r.describe()})" for r in rs)

        warn = f"; {len(self.warnings)} warning(s): {names(self.warnings)}" if self.warnings else ""
        if self.critical_failures:
            return (f"{len(self.critical_failures)} critical expectation(s) failed: "
                    f"{names(self.critical_failures)}{warn}")
        return f"all {len(self.results)} expectations passed their critical checks{warn}"


def taxonomy(cfg: Config) -> list[str]:
    """Every arXiv category in conf/<quality.taxonomy_file>."""
    spec = yaml.safe_load(resources.read_text("conf", cfg.quality.taxonomy_file))
    cats = {f"{archive}.{sub}" for archive, subs in spec["current"].items() for sub in subs}
    return sorted(cats | set(spec.get("standalone", ())) | set(spec.get("legacy", ())))


def parameters(cfg: Config) -> dict:
    """The $PARAMETER values the suites refer to: thresholds and value sets from conf and schemas."""
    known = list(cfg.disciplines.get("disciplines", ())) + [cfg.disciplines.get("fallback", "unknown")]
    return {**cfg.quality.thresholds, "disciplines": known, "image_formats": list(cfg.ingest.formats),
            "quarantine_reasons": list(schemas.quarantine_reasons())}


def _layout_ok(cfg: Config) -> F.Column:
    layouts = dict(cfg.quality.layouts)
    default = layouts.pop("default", None)
    expr = F.lit(True) if default is None else F.col("image_path").rlike(default)
    for source, pattern in sorted(layouts.items()):
        expr = F.when(F.col("source") == source, F.col("image_path").rlike(pattern)).otherwise(expr)
    return expr


def with_path_checks(cfg: Config):
    """Adds path_off_layout and path_arxiv_mismatch (the offending value, or null)."""
    def transform(pairs: DataFrame) -> DataFrame:
        safe = ~F.col("image_path").rlike(UNSAFE_PATH)
        on_layout = safe & _layout_ok(cfg)
        number = F.when(F.col("arxiv_id").contains("/"), F.substring_index("arxiv_id", "/", -1)) \
                  .otherwise(F.col("arxiv_id"))
        folder = F.regexp_extract("image_path", ARXIV_FOLDER, 2)
        yymm = F.regexp_extract("image_path", ARXIV_FOLDER, 1)
        agrees = (folder == number) & (yymm == F.substring(number, 1, 4))
        arxiv = F.col("source").isin(*cfg.ingest.arxiv_sources)
        return (pairs
                .withColumn("path_off_layout", F.when(safe & ~on_layout, F.col("image_path")))
                .withColumn("path_arxiv_mismatch", F.when(
                    arxiv & on_layout & (F.col("arxiv_id").isNull() | ~F.coalesce(agrees, F.lit(False))),
                    F.concat_ws(" <> ", "image_path", F.coalesce("arxiv_id", F.lit("null"))))))
    return transform


def with_value_checks(cfg: Config, categories: list[str]):
    """Adds is_unknown, has_unknown_category, caption_chars, recaption_chars, recaption_present."""
    fallback = cfg.disciplines.get("fallback", "unknown")

    def transform(pairs: DataFrame) -> DataFrame:
        outside = F.array_except(F.coalesce("categories", F.array().cast("array<string>")),
                                 F.array(*[F.lit(c) for c in categories]))
        return (pairs
                .withColumn("is_unknown", (F.col("discipline") == fallback).cast("int"))
                .withColumn("has_unknown_category", (F.size(outside) > 0).cast("int"))
                .withColumn("caption_chars", F.coalesce(F.length("caption"), F.lit(0)))
                .withColumn("recaption_chars", F.coalesce(F.length("recaption"), F.lit(0)))
                .withColumn("recaption_present",
                            F.coalesce(F.length(F.trim("recaption")) > 0, F.lit(False)).cast("int")))
    return transform


def checked_pairs(pairs: DataFrame, images: DataFrame, duplicates: DataFrame, cfg: Config,
                  categories: list[str]) -> DataFrame:
    """The frame the pairs suites run on: key columns plus one column per row-level check."""
    image_keys = images.select("image_sha256", F.lit(1).alias("_has_image")).dropDuplicates(["image_sha256"])
    shared = (duplicates.where("group_kind = 'exact'").select("pair_id", F.lit(1).alias("_shared"))
              .dropDuplicates(["pair_id"]))
    return (pairs.select("pair_id", "source", "discipline", "arxiv_id", "image_path", "image_sha256",
                         "categories", "caption", "recaption")
            .join(image_keys, "image_sha256", "left")
            .join(shared, "pair_id", "left")
            .transform(with_path_checks(cfg))
            .transform(with_value_checks(cfg, categories))
            .withColumn("missing_image_row", F.when(F.col("_has_image").isNull(), F.col("image_sha256")))
            .withColumn("shares_image_bytes", F.coalesce("_shared", F.lit(0)))
            .drop("_has_image", "_shared", "categories", "caption", "recaption"))


def checked_images(images: DataFrame, duplicates: DataFrame) -> DataFrame:
    """The frame the images suites run on: metadata plus near_duplicate (1 when in a near cluster)."""
    near = (duplicates.where("group_kind = 'near'").select("image_sha256", F.lit(1).alias("_near"))
            .dropDuplicates(["image_sha256"]))
    return (images.select("image_sha256", "format", "width", "height", "image_dhash")
            .join(near, "image_sha256", "left")
            .withColumn("near_duplicate", F.coalesce("_near", F.lit(0))).drop("_near"))


def checked_text_signals(signals: DataFrame, pairs: DataFrame, cfg: Config) -> DataFrame:
    """The frame the text_signals suite runs on: the pairs' signals as 0/1 columns (shares are their means),
    boilerplate from the papers that share each caption key, current = computed from the pair's row as it is."""
    p = pairs.select("pair_id", "paper_id", F.col("row_hash").alias("pair_row_hash"))
    s = signals.join(p, "pair_id")
    papers = (s.where(F.col("caption_key").isNotNull()).groupBy("caption_key")
              .agg(F.countDistinct("paper_id").alias("papers")))
    flag = lambda c: F.when(c, 1).otherwise(0)      # noqa: E731
    return (s.join(papers, "caption_key", "left").select(
        "pair_id", "caption_math_share", "recaption_math_share",
        flag(F.col("caption_truncated")).alias("caption_truncated"),
        flag(F.col("recaption_truncated")).alias("recaption_truncated"),
        flag(F.coalesce(F.col("recaption_lang") != "en", F.lit(False))).alias("recaption_non_english"),
        flag(F.coalesce(F.col("papers") >= cfg.text.boilerplate_papers, F.lit(False))).alias("boilerplate"),
        flag(F.col("row_hash") == F.col("pair_row_hash")).alias("current")))


def source_files(ingest_log: DataFrame, pairs: DataFrame, quarantine: DataFrame) -> DataFrame:
    """One row per JSONL file that ingest_log names or that rows come from: its logged counts against the
    rows the lake holds, and `mismatch` (what disagrees, in words; null when all agree). A file read whole
    (status ok) must hold exactly its counts; a file the log does not name must hold no row."""
    logged = ingest_log.where("kind = 'jsonl'").select("source_file", "status", "accepted", "quarantined")
    held = (pairs.groupBy("source_file").agg(F.count("*").alias("in_pairs"))
            .join(quarantine.groupBy("source_file").agg(F.count("*").alias("in_quarantine")), "source_file", "full"))
    both = logged.join(held, "source_file", "full").fillna(0, ["in_pairs", "in_quarantine"])
    differ = (F.col("in_pairs") != F.col("accepted")) | (F.col("in_quarantine") != F.col("quarantined"))
    said = F.concat(F.col("source_file"), F.lit(": "), F.col("in_pairs").cast("string"), F.lit(" pairs and "),
                    F.col("in_quarantine").cast("string"), F.lit(" quarantined rows in the lake, "))
    return both.withColumn("mismatch", F.when(
        (F.col("status") == "ok") & differ,
        F.concat(said, F.lit("ingest_log counted "), F.col("accepted").cast("string"), F.lit(" and "),
                 F.col("quarantined").cast("string"))).when(
        F.col("status").isNull(), F.concat(said, F.lit("a file ingest_log does not name"))))


def input_lines(spark: SparkSession, pairs: int, quarantined: int) -> DataFrame:
    """Every input line's outcome, from the two tables' row counts: quarantined 0 for each of the `pairs`
    pairs, 1 for each of the `quarantined` lines."""
    return spark.range(pairs + quarantined).select((F.col("id") >= pairs).cast("int").alias("quarantined"))


@contextlib.contextmanager
def _quality_folders(cfg: Config, lake: Lake, out: str | None):
    """(Great Expectations' project folder, Data Docs folder, where the docs end up) on local disk. A local
    lake keeps the project under itself; an object-store lake's project is copied down for the run and
    back up after it, and Data Docs built for an s3:// target are uploaded when the block ends."""
    q = cfg.quality
    target = out or lake.path(q.docs_dir)
    if not remote(target):
        target = str(Path(target).resolve())
    with contextlib.ExitStack() as stack:
        if lake.remote:
            context = os.path.join(stack.enter_context(tempfile.TemporaryDirectory(prefix="s1mmalign-gx-")), "gx")
            lake.store().download_tree(q.context_dir, context)
        else:
            context = lake.path(q.context_dir)
        docs = stack.enter_context(storage.output_folder(target, cfg.s3))
        yield context, docs, target
        if lake.remote:
            lake.store().upload_tree(context, q.context_dir)


def run(spark: SparkSession, cfg: Config, lake: Lake, out: str | None = None,
        run_id: str | None = None, full: bool = False) -> Outcome:
    """Validate the lake's tables (NEEDED: the caller checks they exist, Lake.require): the
    stages dedup, frames, suites and results, each one log line; returns the Outcome. full: find near
    duplicates among every image hash anew, not only the new ones against the stored band keys."""
    started = time.monotonic()
    outcome = Outcome(run_id or new_run_id("validate"))
    lake.ensure_tables(spark, job="validate")
    now = datetime.now(timezone.utc)
    versions = {t: lake.version(t, spark) for t in DEDUP_INPUTS}    # what it reads: no writer runs beside it
    raw = {t: lake.read(spark, t) for t in NEEDED}
    raw.update({t: lake.read(spark, t) for t in OPTIONAL if lake.exists(t, spark)})

    state = _states(spark, lake)
    added = _ImagesAdded(spark, lake, versions["images"])
    duplicates, built = _dedup(spark, cfg, lake, raw, outcome, now, full, versions, state, added)
    checks = _checked(spark, cfg, lake, raw, duplicates, outcome, now, full, versions, state, added, built)
    frames, rows, unreconciled = _frames(spark, cfg, raw, checks)
    with _quality_folders(cfg, lake, out) as (context_dir, docs_dir, docs_target):   # uploaded at the end, if S3
        runner = quality.Runner(context_dir, docs_dir, cfg.quality)
        _suites(cfg, runner, raw, frames, rows, checks, outcome)
        _reread(spark, cfg, lake, raw["ingest_log"], unreconciled, outcome.run_id)
        with Stage("results", log) as st:
            _write_results(spark, lake, outcome, now)
            index, outcome.docs_note = runner.build_docs()
            if index:
                outcome.docs_index = f"{docs_target.rstrip('/')}/index.html"
            st.done(len(outcome.results), "rows to quality_results",
                    f"Data Docs {outcome.docs_index or outcome.docs_note}")
    outcome.seconds = time.monotonic() - started
    log.info("validate %s: %s (%.1fs)", outcome.run_id, outcome.summary_line(), outcome.seconds)
    return outcome


def _dedup(spark: SparkSession, cfg: Config, lake: Lake, raw: dict, outcome: Outcome, now: datetime,
           full: bool, versions: dict[str, int], state: dict[str, dict[str, int]], added: _ImagesAdded
           ) -> tuple[DataFrame, dict[str, dict[str, int]]]:
    """Stage dedup: exact groups and near-duplicate clusters in `duplicates`; returns them and the input versions
    they hold (recorded in validate_state by _checked, with its own, in one commit). Only the groups a change
    touches are found again and merged (_changed_since_built says which changes, dedup.touched which groups);
    the table is kept as it is when nothing it is made of changed, and built anew (replaced whole) with --full,
    after a search of every hash, or where the change cannot be told."""
    with Stage("dedup", log) as st:
        stats = dedup.DedupStats()
        stats.search, _ = _near_matches(spark, cfg.quality, lake, raw["images"], stats, full,
                                        added.since(state.get("dhash_bands", {}).get("images")))
        scope, why = (None, "--full") if full else _changed_since_built(spark, lake, versions,
                                                                        state.get("duplicates", {}), added)
        if scope is not None and not stats.search.startswith("incremental"):
            scope, why = None, "near matches found anew"
        got = None
        if scope:
            got = dedup.touched(raw["pairs"], raw["images"], cfg.quality, lake.read(spark, "dhash_edges"),
                                {sha for sha, _ in scope}, {h for _, h in scope}, stats)
            if got is None:
                why = f"more near matches than quality.driver_cluster_edges ({cfg.quality.driver_cluster_edges})"

        def stamped(df: DataFrame) -> DataFrame:
            return df.withColumn("validate_run_id", F.lit(outcome.run_id)).withColumn("computed_at", F.lit(now))

        if scope is not None and not scope:
            rows = lake.read(spark, "duplicates")
            stats = dedup.counted(rows, stats)
            stats.built = "kept (no pair's image, path or discipline changed)"
        elif got is not None:
            touched, shas, hashes = got
            replaced = dedup.in_scope(lake.read(spark, "duplicates"), shas, hashes).localCheckpoint()
            found, gone = touched.count(), replaced.count()
            if found or gone:
                lake.merge(spark, "duplicates", stamped(touched), deletes=replaced)
            rows = lake.read(spark, "duplicates")
            stats = dedup.counted(rows, stats)
            stats.built = (f"updated ({why}): the groups they touch found again, {found} rows "
                           f"replacing {gone}")
        else:
            rows, stats = dedup.find(raw["pairs"], raw["images"], cfg.quality, lake.read(spark, "dhash_edges"),
                                     stats)
            lake.replace(spark, "duplicates", stamped(rows))
            stats.built = f"built anew ({why})"
        built = {"dhash_bands": {"images": versions["images"]}, "duplicates": versions}   # recorded by _checked
        outcome.stats = stats
        st.done(stats.exact_groups + stats.near_clusters, "duplicate groups",
                f"{stats.built}: {stats.exact_groups} exact ({stats.exact_pairs} pairs), {stats.near_clusters} "
                f"near clusters ({stats.near_images} images, {stats.near_pairs} pairs); near matches "
                f"{stats.search}: {stats.candidate_pairs} candidate hash pairs, {stats.matches} matches in all, "
                f"{stats.skipped_buckets} buckets skipped")
    return rows, built


def _states(spark: SparkSession, lake: Lake) -> dict[str, dict[str, int]]:
    """validate_state: derived table -> the versions of its inputs it holds (table -> version)."""
    out: dict[str, dict[str, int]] = {}
    for r in lake.read(spark, "validate_state").select("derived", "table_name", "version").collect():
        out.setdefault(r.derived, {})[r.table_name] = r.version
    return out


def _record_states(spark: SparkSession, lake: Lake, was: dict[str, dict[str, int]],
                   now: dict[str, dict[str, int]], run: tuple[str, datetime]) -> None:
    """Record in validate_state that each derived table of `now` holds those versions of its inputs: one
    commit replacing their rows, none when `was` (what the table says) already does. Called once the derived
    tables are written: a run cut before it leaves the older versions, and the next run redoes their change."""
    if all(was.get(derived) == versions for derived, versions in now.items()):
        return
    rows = [(derived, t, v, *run) for derived, versions in sorted(now.items()) for t, v in sorted(versions.items())]
    names = ", ".join(f"'{d}'" for d in sorted(now))
    lake.replace(spark, "validate_state", spark.createDataFrame(rows, schemas.table("validate_state").spark()),
                 where=f"derived IN ({names})")


class _ImagesAdded:
    """The images rows added since a version of `images` up to `version`, as (image_sha256, h) on the driver,
    read from the files its log added (Lake.files_added): each version asked for is read once per run."""

    def __init__(self, spark: SparkSession, lake: Lake, version: int):
        self.spark, self.lake, self.version = spark, lake, version
        self._read: dict[int, tuple[list | None, str]] = {}

    def since(self, since: int | None) -> tuple[list[tuple[str, int]] | None, str]:
        """(rows added after version `since`, how they were found); or (None, why they cannot be: no record,
        a table older than recorded, rows that may have gone)."""
        if since is None:
            return None, "no record of the images version they hold"
        if since > self.version:
            return None, f"images is at version {self.version}, older than the {since} recorded"
        if since not in self._read:
            files, how = ([], "images unchanged") if since == self.version else \
                self.lake.files_added("images", since, self.version)
            rows = None if files is None else [] if not files else [
                (r[0], r[1]) for r in self.spark.read.schema("image_sha256 string, image_dhash bigint")
                .parquet(*files).collect()]
            self._read[since] = (rows, how)
        return self._read[since]


def _changed_since_built(spark: SparkSession, lake: Lake, versions: dict[str, int], built: dict[str, int],
                         added: _ImagesAdded) -> tuple[set[tuple[str, int]] | None, str]:
    """What changed, of what `duplicates` is made of, since the versions it holds (`built`, from
    validate_state): (the image shas and hashes (image_sha256, h) of every pair row inserted, deleted or moved
    to other bytes, a path or a discipline (pairs' change data feed: both sides of an update) and of every
    image added (the files images' log added), what that is in words); or (None, why it cannot be told: no
    record, a table older than recorded, the feed gone, images rows that may have gone)."""
    if set(built) != set(versions):
        return None, "no record of the versions it was built from"
    if any(built[t] > versions[t] for t in versions):
        return None, f"a table is older than the version it was built from ({built} > {versions})"
    scope: set[tuple[str, int]] = set()
    if built["pairs"] < versions["pairs"]:
        rows = delta_io.changes(spark, lake.path("pairs"), built["pairs"], versions["pairs"], dedup.PAIR_COLUMNS)
        if rows is None:
            return None, f"pairs' change data feed since version {built['pairs']} is not available"
        scope |= {(r[0], r[1]) for r in rows.select("image_sha256", "image_dhash").distinct().collect()}
    images, how = added.since(built["images"])
    if images is None:
        return None, f"images changed since version {built['images']}: {how}"
    scope |= set(images)
    return scope, (f"{len(scope)} image(s) of pairs changed or images added since pairs version {built['pairs']}, "
                   f"images version {built['images']}")


def _near_matches(spark: SparkSession, params, lake: Lake, images: DataFrame, stats: dedup.DedupStats,
                  full: bool, added: tuple[list[tuple[str, int]] | None, str] = (None, "")) -> tuple[str, bool]:
    """Bring dhash_edges up to date with the images' hashes; say how (only the hashes new since the last run,
    _new_hashes_matched, or every hash anew: with --full, or where _new_hashes_matched says why) and whether
    matches may have been added. Written edges first, band keys after: a run cut between the two finds the
    same edges again. added: the images rows added since the version whose hashes the band keys hold
    (_ImagesAdded.since), or (None, why not known): then every hash of images is compared with the stored."""
    new, why = (0, "--full") if full else _new_hashes_matched(spark, params, lake, images, stats, added)
    if why is None:
        return f"incremental ({new} new hashes)", new > 0
    log.info("near duplicates: every hash banded anew (%s)", why)
    bands = dedup.banded(images, params).localCheckpoint()
    lake.replace(spark, "dhash_edges", dedup.banded_matches(bands, params, stats))
    lake.replace(spark, "dhash_bands", bands)
    return f"in full ({why})", True


def _new_hashes_matched(spark: SparkSession, params, lake: Lake, images: DataFrame, stats: dedup.DedupStats,
                        added: tuple[list[tuple[str, int]] | None, str]) -> tuple[int, str | None]:
    """Band the hashes not in dhash_bands, compare them with the stored band keys, add their matches to
    dhash_edges and their keys to dhash_bands: (new hashes, None). Or, written nothing, (0, why every hash
    must be searched anew): the first run, changed settings, a stored hash gone, a bucket past max_bucket.
    The candidates are the hashes of the images rows added (`added`), or, where they are not known, every hash
    of images compared with the stored ones."""
    stored = lake.read(spark, "dhash_bands")
    # one row tells the table's scheme: a run appends only under the scheme the table has, and a search anew
    # replaces every row
    first = stored.select("scheme").limit(1).collect()
    if not first:
        return 0, "no stored band keys"
    if first[0].scheme != dedup.scheme(params):
        return 0, "settings changed"
    known = stored.where("band = 0").select("h", F.lit(1).alias("_old"))
    rows, how = added
    hashes = None if rows is None else sorted({h for _, h in rows if h is not None})
    if hashes is not None and not hashes:
        log.info("near duplicates: no new hash (%s)", how)
        return 0, None
    limit = params.driver_cluster_edges
    if hashes is not None and len(hashes) <= limit:
        got = _new_matched_on_driver(spark, params, lake, stored, hashes, stats, how, limit)
        if got is not None:
            return got
    if hashes is not None:
        candidates = spark.createDataFrame([(h,) for h in hashes], "h bigint")
        diff = F.broadcast(candidates).join(known, "h", "left_anti").localCheckpoint()
        new = diff.count()
    else:
        log.info("near duplicates: every hash of images compared with the stored ones (%s)", how)
        now = images.select(F.col("image_dhash").alias("h")).distinct().withColumn("_now", F.lit(1))
        diff = now.join(known, "h", "full").where("_old IS NULL OR _now IS NULL").localCheckpoint()
        gone, new = diff.agg(F.count("_old"), F.count("_now")).first()
        if gone:
            return 0, f"{gone} stored hash(es) no longer in images"
        diff = diff.where("_now IS NOT NULL")
        if 0 < new <= limit:
            got = _new_matched_on_driver(spark, params, lake, stored, [r.h for r in diff.select("h").collect()],
                                         stats, how, limit)
            if got is not None:
                return got
    log.info("near duplicates: %d new hash(es) (%s)", new, how)
    if not new:
        return 0, None
    added_bands = dedup.banded(diff.select(F.col("h").alias("image_dhash")), params)
    edges = dedup.new_matches(stored, added_bands, params, stats)
    if edges is None:
        return 0, "a bucket grew past quality.max_bucket"
    if stats.matches:
        lake.merge(spark, "dhash_edges", edges)
    lake.append(spark, "dhash_bands", added_bands)
    return new, None


def _new_matched_on_driver(spark: SparkSession, params, lake: Lake, stored: DataFrame, hashes: list[int],
                           stats: dedup.DedupStats, how: str, limit: int) -> tuple[int, str | None] | None:
    """_new_hashes_matched's search and writes for candidate hashes few enough for the driver
    (dedup.new_matches_local): (new hashes, None), (0, why) for a search anew, or None: Spark's to do."""
    what, new, matches, rows = dedup.new_matches_local(stored, hashes, params, stats, limit)
    if what == "big":
        return None
    log.info("near duplicates: %d new hash(es) (%s), matched on the driver", len(new), how)
    if what == "crossed":
        return 0, "a bucket grew past quality.max_bucket"
    if matches:
        lake.merge(spark, "dhash_edges", spark.createDataFrame(matches, schemas.table("dhash_edges").spark()))
    if rows:
        lake.append(spark, "dhash_bands", spark.createDataFrame(rows, schemas.table("dhash_bands").spark()))
    return len(new), None


@dataclass
class _Checks:
    """The checked frames of pairs and images (stage checks): `frames`, the rows Great Expectations runs on: the
    stored table after a full check, and after an incremental one where it is few enough rows for the pandas
    engine (quality.pandas_max_rows); else the re-checked rows and a sample of the unexpected, and `stored`
    holds the stored table the lake-wide numbers are aggregated from (incremental.lake_results)."""
    frames: dict[str, DataFrame]
    stored: dict[str, DataFrame] = field(default_factory=dict)
    shown: dict[str, int] = field(default_factory=dict)     # incremental: the rows of each frame (re-checked,
                                                            # and a sample of the unexpected)


def _checked(spark: SparkSession, cfg: Config, lake: Lake, raw: dict, duplicates: DataFrame, outcome: Outcome,
             now: datetime, full: bool, versions: dict[str, int], state: dict[str, dict[str, int]],
             added: _ImagesAdded, built: dict[str, dict[str, int]]) -> _Checks:
    """Stage checks: checked_pairs and checked_images brought up to date with the lake, then the versions they
    hold (derived `checked`) and those dedup's tables hold (`built`) to validate_state, in one commit (none when
    none moved; a run cut before it leaves the older versions, and the next run redoes their change). Only the
    rows a change touches are checked again and merged (incremental.touched says which; one commit per table,
    none when none changed); every row is checked anew and the tables replaced with --full, on the first run,
    or where the change cannot be told."""
    with Stage("checks", log) as st:
        categories = taxonomy(cfg)
        held = state.get("checked", {})
        current = {**versions, "duplicates": lake.version("duplicates", spark),
                   "settings": incremental.settings_digest(cfg, categories)}
        got, why = (None, "--full") if full else incremental.touched(
            spark, lake, held, current, added.since(held.get("images")))
        compute = {"pairs": lambda rows: checked_pairs(rows, raw["images"], duplicates, cfg, categories),
                   "images": lambda rows: checked_images(rows, duplicates)}
        if got is None:
            for frame, (table, _) in incremental.TABLES.items():
                lake.replace(spark, table, compute[frame](raw[frame]))
            checks = _Checks({frame: lake.read(spark, table) for frame, (table, _) in incremental.TABLES.items()})
            outcome.checks = f"every row checked ({why})"
        else:
            checks = _Checks({})
            params, suites = parameters(cfg), quality.load_suites()
            for frame, (table, key) in incremental.TABLES.items():
                keys = got.pairs if frame == "pairs" else got.images
                rows = None
                if got.counts[frame]:
                    rows = compute[frame](raw[frame].join(keys, key, "left_semi")).localCheckpoint()
                    gone = keys.join(raw[frame], key, "left_anti")
                    lake.merge(spark, table, rows, deletes=gone)
                stored = lake.read(spark, table)
                if quality.engine(raw[frame].count(), cfg.quality) == "pandas":
                    checks.frames[frame] = stored     # few enough for Great Expectations on the driver: all of them
                    continue
                shown = incremental.unexpected_sample(stored, incremental.aggregated(suites, frame, params), params,
                                                      cfg.quality.partial_unexpected * 10)
                if rows is not None:
                    shown = rows.unionByName(shown).dropDuplicates([key])
                checks.frames[frame], checks.stored[frame] = shown.localCheckpoint(), stored
                checks.shown[frame] = checks.frames[frame].count()
            outcome.checks = f"incremental: {got.how}"
        _record_states(spark, lake, state, {**built, "checked": current}, (outcome.run_id, now))
        st.done(sum(got.counts.values()) if got else sum(f.count() for f in checks.frames.values()),
                "rows checked", outcome.checks)
    return checks


def _frames(spark: SparkSession, cfg: Config, raw: dict, checks: _Checks
            ) -> tuple[dict[str, object], dict[str, int], dict[str, str]]:
    """Stage frames: the frames the suites run on (pairs and images with their checked columns from stage checks,
    ...), each as its suites' engine takes it (quality.engine by the rows its tables hold, from their logs'
    counts): on the driver as pandas, converted once for all its suites, or as a cached Spark DataFrame; their
    row counts; and the source files whose rows disagree with ingest_log (file -> what disagrees)."""
    with Stage("frames", log) as st:
        held = {name: raw[name].count() for name in ("pairs", "images", "quarantine", *OPTIONAL) if name in raw}
        files = source_files(raw["ingest_log"], raw["pairs"], raw["quarantine"]).cache()
        unreconciled = {r.source_file: r.mismatch for r in files.where("mismatch IS NOT NULL AND status = 'ok'")
                        .select("source_file", "mismatch").collect()}
        lazy = {
            **checks.frames,
            "input_lines": input_lines(spark, held["pairs"], held["quarantine"]),
            "quarantine": raw["quarantine"].select("reason"),
            "source_files": files,
        }
        bound = {**held, "input_lines": held["pairs"] + held["quarantine"], "source_files": files.count()}
        bound.update(checks.shown)      # incremental: only the rows shown
        if "clip_scores" in raw:
            lazy["clip_scores"] = raw["clip_scores"].select("pair_id", "model", "score_caption", "score_recaption")
        if "text_signals" in raw:   # a row per signal row whose pair is there: its table's rows (the engine's bound)
            lazy["text_signals"] = checked_text_signals(raw["text_signals"], raw["pairs"], cfg)
        if "fluency_scores" in raw:
            lazy["fluency_scores"] = raw["fluency_scores"].select("pair_id", "model", "ppl_caption", "ppl_recaption")
        frames: dict[str, object] = {}
        counts: dict[str, int] = {}
        for name, frame in lazy.items():
            if quality.engine(bound[name], cfg.quality) == "pandas":
                frames[name] = quality.to_pandas(frame)
                counts[name] = len(frames[name])
            else:
                frames[name] = frame.cache()
                counts[name] = frames[name].count()
        st.done(counts["pairs"], "pairs checked", f"{counts['images']} images; " + ", ".join(
            f"{name} {'pandas' if quality.is_pandas(frame) else 'spark'}" for name, frame in frames.items()))
    return frames, counts, unreconciled


def _reread(spark: SparkSession, cfg: Config, lake: Lake, ingest_log: DataFrame, bad: dict[str, str],
            run_id: str) -> None:
    """Mark the files whose rows disagree with ingest_log's counts (bad: file -> what disagrees, from the
    source_files frame) incomplete in ingest_log, so that the next ingest reads them again. The expectation
    lines_reconciled reports them (run before: it sees the log as ingest left it)."""
    if not bad:
        return
    log.warning("%d file(s) whose rows disagree with ingest_log, marked incomplete (the next ingest reads them "
                "again): %s", len(bad), "; ".join(list(bad.values())[:5]))
    detail = F.create_map(*[F.lit(x) for kv in bad.items() for x in kv])[F.col("source_file")]
    marked = (ingest_log.where(F.col("source_file").isin(list(bad)))
              .withColumn("status", F.lit("incomplete"))
              .withColumn("detail", F.concat(F.lit(f"validate {run_id}: "), detail, F.lit(": read again"))))
    lake.merge(spark, "ingest_log", marked)


def _suites(cfg: Config, runner: quality.Runner, raw: dict, frames: dict, rows: dict[str, int], checks: _Checks,
            outcome: Outcome) -> None:
    """Stage suites: every suite on its frame (schema suites on the table as stored, by Spark), the engine by
    the frame's rows (quality.Runner.engine); results to outcome. After an incremental check (checks.stored),
    a suite of the pairs or images frame runs on the re-checked rows, and its results carry the lake-wide
    numbers aggregated from the stored table (incremental.lake_results); one whose expectations that cannot
    aggregate runs on the whole stored table."""
    with Stage("suites", log) as st:
        params = parameters(cfg)
        used: list[DataFrame] = []
        suites = quality.load_suites()
        lake_wide: dict[str, dict] = {}     # result key -> lake-wide numbers, one aggregation per stored table
        for suite in suites:
            schema_suite = suite.name.startswith("schema.")
            frame = raw.get(suite.table) if schema_suite else frames.get(suite.table)
            if frame is None:
                if suite.table not in OPTIONAL:
                    raise quality.SuiteError(f"suite {suite.name}: no frame named {suite.table!r}")
                log.info("suite %s: skipped (no %s table yet)", suite.name, suite.table)
                continue
            n = None if schema_suite else rows.get(suite.table)
            stored = None if schema_suite else checks.stored.get(suite.table)
            if stored is not None and incremental.supported(suite, params):
                if f"{suite.name}:{suite.expectation_names[0]}" not in lake_wide:
                    lake_wide.update(incremental.lake_results(
                        stored, incremental.aggregated(suites, suite.table, params), params))
                results = (incremental.merged(runner.run(suite, frame, params, outcome.run_id), lake_wide, n) if n
                           else incremental.results_without_rows(suite, lake_wide))
                outcome.results += results
                failed = [r.expectation for r in results if not r.success]
                log.info("suite %s: %d expectations, %d failed%s (lake-wide from %s; %d rows shown: re-checked, "
                         "unexpected)",
                         suite.name, len(results), len(failed), f" ({', '.join(failed)})" if failed else "",
                         incremental.TABLES[suite.table][0], n)
                continue
            if stored is not None:
                log.info("suite %s: an expectation incremental.lake_results cannot aggregate: run on every stored "
                         "row", suite.name)
                frame, n = stored, None
            used.append(frame)
            engine = "pandas" if quality.is_pandas(frame) else "spark"
            results = runner.run(suite, frame, params, outcome.run_id)
            outcome.results += results
            failed = [r.expectation for r in results if not r.success]
            log.info("suite %s: %d expectations, %d failed%s (%s%s)", suite.name, len(results), len(failed),
                     f" ({', '.join(failed)})" if failed else "", engine, "" if n is None else f", {n} rows")
        # Great Expectations persists every frame it validates (its Spark source's default) and never lets go:
        # a later run in the same session would then be answered from that cache, a table's old version.
        for frame in [*frames.values(), *used]:
            if not quality.is_pandas(frame):
                frame.unpersist()
        st.done(len(outcome.results), "expectations")


def _write_results(spark: SparkSession, lake: Lake, outcome: Outcome, now: datetime) -> None:
    """outcome's results as quality_results rows, replacing the rows of the same run id in one commit (a re-run
    of the same id converges). Only the files that may hold that id are read (their min/max run ids: ids
    grow with time), not the whole history, as a MERGE on the table's key would."""
    if not re.fullmatch(r"[A-Za-z0-9_.:-]+", outcome.run_id):
        raise ValueError(f"validate run id {outcome.run_id!r}: letters, digits and _.:- only")
    tdef = schemas.table("quality_results")
    rows = [dict(validate_run_id=outcome.run_id, validated_at=now, **asdict(r)) for r in outcome.results]
    results_df = spark.createDataFrame([tuple(r[c] for c in tdef.names) for r in rows], tdef.spark())
    lake.replace(spark, "quality_results", results_df, where=f"validate_run_id = '{outcome.run_id}'")
