"""The ingest pipeline: sources -> pairs, images, quarantine, ingest_log (Delta, MERGE, incremental).

Stages (each logs one line with counts and rates):
  plan      list sources; compare fingerprints with ingest_log; pick the files to read (new or changed) and
            those gone; unchanged JSONL files are never parsed again
  archives  stream each changed archive in one task into slice files of member bytes (staging), then
            analyse every slice in its own task: image facts and thumbnails -> staging
  jsonl     (beside archives) count lines per chunk, then parse every line -> staging (records, rejects)
  resolve   the lines read, and the lines of other files whose outcome could change (IngestRun._reexamined:
            their records from pairs and waiting_lines), ranked per pair_id; each image looked up in the
            archives (this run's members, the index of the others), else the unpacked tree; anything
            unresolved -> quarantine with a reason
  write     images (bytes read back from the slices into Parquet files by Python tasks, then committed),
            image_index, pairs, quarantine, waiting_lines (MERGE: only files with a changed row are
            rewritten), ingest_log (last)

A crash before the last write leaves ingest_log as it was, so a re-run redoes the same files and
every write converges to what one clean run writes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from s1mmalign.config import Config
from s1mmalign.ingest import slices, tasks
from s1mmalign.ingest.sources import Archive, Refused, SourcePlan, discover
from s1mmalign.lake import delta_io, schemas
from s1mmalign.lake.root import Lake
from s1mmalign.lake.storage import FileInfo, Store
from s1mmalign.stages import Stage, clear_staging, new_run_id, start_staging

log = logging.getLogger(__name__)

BROADCAST_KEYS = 2_000_000   # up to this many new images, their keys are broadcast to the bytes
INDEX_LOOKUP_LINES = 500_000  # a refresh resolving up to this many lines broadcasts their paths to the index
PAIR_CONTENT = [c for c in schemas.table("pairs").names
                if c not in ("row_hash", "ingest_run_id", "ingested_at")]
SLICE_POLL_SECONDS = 0.5     # how often the driver looks for slices an archive's split has completed


@dataclass
class RunSummary:
    run_id: str
    jsonl_files: int = 0
    archives: int = 0
    lines: int = 0
    pairs: int = 0
    quarantined: int = 0
    images_read: int = 0
    seconds: float = 0.0
    archive_tasks: dict[str, int] = field(default_factory=dict)   # archive -> tasks that analysed its members
    files_read: list[str] = field(default_factory=list)     # the JSONL files parsed (new or changed)
    gone_files: list[str] = field(default_factory=list)     # logged files no longer listed: their rows dropped
    reexamined: int = 0          # lines of files not read whose outcome could change, resolved again
    moved: int = 0               # of those, lines that moved between pairs and quarantine
    bytes_written: dict[str, int] = field(default_factory=dict)   # table -> bytes of data files added


def _in_list(column: str, values) -> str:
    quoted = ", ".join("'" + v.replace("'", "''") + "'" for v in sorted(values))
    return f"{column} IN ({quoted})" if values else "false"


def _descriptors(spark: SparkSession, rows: list[dict], schema, weight: str | None = None) -> DataFrame:
    """A DataFrame of task descriptors. Without `weight`, one per partition (each its own task);
    with it, packed greedily by that weight into about 2 tasks per core (many small files, few tasks).

    Built on the JVM side (a range of task numbers joined with the descriptors, broadcast), not from a
    Python RDD, which would start a Python worker per task just to hand the descriptors over.
    """
    from pyspark.sql import types as T

    tuples = [tuple(r[f.name] for f in schema.fields) for r in rows]
    if weight is None or len(rows) <= 1:
        bins = [[t] for t in tuples] or [[]]
    else:
        bins = [[] for _ in range(max(1, min(len(rows), 2 * spark.sparkContext.defaultParallelism)))]
        loads = [0] * len(bins)
        for row, tup in sorted(zip(rows, tuples, strict=True), key=lambda rt: -rt[0][weight]):
            i = loads.index(min(loads))
            bins[i].append(tup)
            loads[i] += row[weight] + 1
    binned = spark.createDataFrame([(i, *tup) for i, b in enumerate(bins) for tup in b],
                                   T.StructType([T.StructField("_task", T.LongType())] + schema.fields))
    return (spark.range(0, len(bins), 1, len(bins)).withColumnRenamed("id", "_task")
            .join(F.broadcast(binned), "_task").drop("_task"))


def run(spark: SparkSession, cfg: Config, source_uri: str, lake: Lake, run_id: str | None = None,
        discovered: tuple[Store, SourcePlan] | None = None) -> RunSummary:
    """Ingest every changed file under source_uri into the lake; returns what the run did.

    discovered: the (store, plan) of sources.discover when the caller has just listed them.
    """
    t_start = time.perf_counter()
    run_id = run_id or new_run_id("ingest")
    summary = RunSummary(run_id)
    lake.ensure_tables(spark)

    with Stage("plan", log) as st:
        store, plan = discovered or discover(Store.from_uri(source_uri, cfg.s3),
                                             cfg.ingest.archive_suffix)
        todo = changes(lake, plan)
        refused = todo.refused
        names = ", ".join(r.file.rel for _, r in refused[:5])
        st.done(sum(len(s.jsonl) for s in plan.sources), "jsonl files listed",
                f"{len(todo.jsonl)} jsonl and {len(todo.archives)} archives to read, "
                f"{len(todo.gone_files)} file(s) gone, {len(plan.sources)} sources"
                + (f"; {len(refused)} file(s) refused, their names not UTF-8: {names}" if refused else ""))
    summary.jsonl_files, summary.archives = len(todo.jsonl), len(todo.archives)
    if not todo.any:
        if refused:
            lake.merge(spark, "ingest_log", spark.createDataFrame(
                [refused_row(r, run_id, datetime.now(timezone.utc)) for r in refused],
                schemas.table("ingest_log").spark()))
            log.info("no file to read; %d refused file(s) logged in ingest_log", len(refused))
        else:
            log.info("nothing changed since the last run: no file read, no row written")
        summary.seconds = time.perf_counter() - t_start
        summary.bytes_written = dict(lake.bytes_written)
        return summary

    staging = lake.path(f"{cfg.ingest.staging_dir}/{run_id}")
    job = IngestRun(spark, cfg, store, plan, lake, run_id, datetime.now(timezone.utc), staging,
                    lake.store(f"{cfg.ingest.staging_dir}/{run_id}"), summary, list(todo.jsonl),
                    todo.archives, refused, todo)
    _clear_staging(lake, cfg)
    start_staging(job.scratch, run_id)
    try:
        # Independent stages, run side by side: while one task streams a large archive, the other cores
        # parse the JSONL files.
        with ThreadPoolExecutor(2) as pool:
            archives_done, jsonl_done = pool.submit(job.stage_archives), pool.submit(job.stage_jsonl)
            parts, chunks = archives_done.result(), jsonl_done.result()
        outputs, unheld = job.resolve(parts)
        if unheld:
            # Pairs of files this run did not read that become quarantined rows need their lines as written
            # (quarantine.raw): read those few files too, and resolve again.
            more = [(s.name, f) for s in plan.sources for f in s.jsonl if f.rel in unheld]
            job.todo_jsonl += more
            chunks += job.stage_jsonl(more)
            outputs, unheld = job.resolve(parts)
            assert not unheld, unheld
        summary.pairs, summary.quarantined = job.write(outputs, parts, chunks)
        summary.lines = summary.pairs + summary.quarantined
    finally:
        _clear_staging(lake, cfg)
    summary.files_read = sorted(job.todo_files)
    summary.gone_files = list(todo.gone_files)
    summary.bytes_written = dict(lake.bytes_written)
    summary.seconds = time.perf_counter() - t_start
    log.info("ingest run %s done in %.1fs: %s", run_id, summary.seconds, json.dumps(asdict(summary)))
    return summary


# --- plan -----------------------------------------------------------------------------------------

@dataclass
class Changes:
    """What a refresh has to do, from the listing against ingest_log (read without Spark)."""

    jsonl: list[tuple[str, FileInfo]]           # (source, file): new or changed JSONL files, parsed whole
    archives: list[Archive]                     # new or changed archives, streamed whole
    refused: list[tuple[str, Refused]]          # files not read (sources.Refused), logged unreadable
    gone_files: list[str] = field(default_factory=list)     # logged files no longer listed: their rows go
    gone_archives: list[tuple[str, str]] = field(default_factory=list)   # (source, archive) no longer listed
    broken_before: dict[str, set] = field(default_factory=dict)   # source -> logged archives with a bad part
    logged: set[str] = field(default_factory=set)           # every source_file ingest_log holds

    @property
    def any(self) -> bool:
        return bool(self.jsonl or self.archives or self.gone_files)

    def names(self) -> list[str]:
        """What a run would read or drop, one name each (jobs/plan.py)."""
        return ([f.rel for _, f in self.jsonl] + [a.name for a in self.archives]
                + [r.file.rel for _, r in self.refused] + [f"{rel} (gone)" for rel in self.gone_files])


def changes(lake: Lake, plan: SourcePlan) -> Changes:
    """The JSONL files and archives whose fingerprints differ from ingest_log's (an archive also when its set
    of parts changed), refused files, and the files ingest_log names that the listing no longer has."""
    logged = lake.rows("ingest_log", ("source", "source_file", "kind", "archive", "fingerprint", "status"))
    seen = {r["source_file"]: (None if r["status"] == "incomplete" else r["fingerprint"]) for r in logged}
    logged_parts: dict[tuple[str, str], set] = {}
    broken: dict[str, set] = {}
    for r in logged:
        if r["kind"] == "archive_part" and r["archive"] is not None:
            logged_parts.setdefault((r["source"], r["archive"]), set()).add(r["source_file"])
            if r["status"] not in ("ok", "unreadable"):
                broken.setdefault(r["source"], set()).add(r["archive"])
    archives = [a for s in plan.sources for a in s.archives
                if any(seen.get(p.rel) != p.fingerprint for p in a.parts)
                or logged_parts.get((a.source, a.name), set()) != {p.rel for p in a.parts}]
    jsonl = [(s.name, f) for s in plan.sources for f in s.jsonl if seen.get(f.rel) != f.fingerprint]
    refused = [(s.name, r) for s in plan.sources for r in s.refused if seen.get(r.file.rel) != r.file.fingerprint]
    listed = ({f.rel for s in plan.sources for f in s.jsonl} | {p.rel for s in plan.sources for a in s.archives
                                                               for p in a.parts}
              | {r.file.rel for s in plan.sources for r in s.refused})
    present = {(a.source, a.name) for s in plan.sources for a in s.archives}
    gone_files = sorted(r["source_file"] for r in logged if r["source_file"] not in listed)
    gone_archives = sorted(k for k in logged_parts if k not in present)
    return Changes(jsonl, archives, refused, gone_files, gone_archives, broken, set(seen))


def log_row(source: str, f: FileInfo, kind: str, run_id: str, now: datetime, *, status: str,
            checksum: str | None = None, read: int = 0, accepted: int = 0, quarantined: int = 0,
            archive: str | None = None, detail: str | None = None) -> dict:
    """One ingest_log row: a file as listed, and what the run made of it."""
    return {"source": source, "source_file": f.rel, "kind": kind, "archive": archive, "size": f.size,
            "modified_at": f.modified_at, "etag": f.etag, "fingerprint": f.fingerprint, "checksum": checksum,
            "read": read, "accepted": accepted, "quarantined": quarantined, "status": status,
            "detail": detail, "ingest_run_id": run_id, "ingested_at": now}


def refused_row(refused: tuple[str, Refused], run_id: str, now: datetime) -> dict:
    """The ingest_log row of a file not read (sources.Refused): unreadable, with why."""
    source, r = refused
    return log_row(source, r.file, r.kind, run_id, now, status="unreadable", archive=r.archive,
                   detail=Refused.DETAIL)


def _clear_staging(lake: Lake, cfg: Config) -> None:
    """Remove every run's staging under the lake (this run's, and any a crashed run left): only the folders
    ingest made (stages.clear_staging)."""
    clear_staging(lake.store(), cfg.ingest.staging_dir)


def _last_of_each_name(members: DataFrame) -> DataFrame:
    """One member per (source, image_path): of one name in an archive, the last (tar's rule, as
    extracting it would leave); across archives of a source, the one in the archive last by name."""
    order = Window.partitionBy("source", "image_path").orderBy(F.col("container").desc(), F.col("member").desc())
    return members.withColumn("_n", F.row_number().over(order)).where("_n = 1").drop("_n")


# --- the run ------------------------------------------------------------------------------------

@dataclass
class Outputs:
    pairs: DataFrame
    quarantine: DataFrame
    blobs: DataFrame          # every good image read this run (archive members and tree): facts, slice
    image_index: DataFrame
    again: DataFrame          # the re-examined lines (of files not read) with their outcome now


@dataclass
class IngestRun:
    """What every step of one ingest run needs; the steps run in order, each returning what it made."""

    spark: SparkSession
    cfg: Config
    store: Store
    plan: SourcePlan
    lake: Lake
    run_id: str
    now: datetime
    staging: str                                # this run's staging folder under the lake (a path or URI)
    scratch: Store                              # the same folder, for the slice files tasks write and read
    summary: RunSummary
    todo_jsonl: list[tuple[str, FileInfo]]      # (source, file) of the JSONL files to read
    todo_archives: list[Archive]
    refused: list[tuple[str, Refused]]                     # (source, file) not read: logged unreadable
    changes: Changes
    members_dirs: list[str] = field(default_factory=list)   # staging folders holding this run's members
    parsed_dirs: list[str] = field(default_factory=list)    # staging folders holding this run's parsed lines
    passes: int = 0                                         # resolve passes (a second when it needed more lines)
    affected: DataFrame | None = None                       # pair_ids whose rows this run decides again

    def __post_init__(self):
        # A lake with no line yet re-examines nothing (every line is read this run)
        self.first_load = self.lake.holds_no_file("pairs") and self.lake.holds_no_file("waiting_lines")

    @property
    def todo_files(self) -> list[str]:
        return [f.rel for _, f in self.todo_jsonl]

    SLICES = "slices"      # the folder of the scratch store where tasks put image bytes for later steps

    # --- archives -------------------------------------------------------------------------------------

    def stage_archives(self) -> list:
        """Stream the archives into slice files, analysing each slice as soon as it is complete; returns
        the part rows (one per part, small).

        One task per archive only gunzips and untars, writing member bytes to slice files; every slice is
        then its own task, so the per-image work of one huge archive spreads over all cores. Slices are
        analysed while their archive is still streaming: a driver thread watches the slice folder and
        hands each batch of complete slices to its own job, so the cores the split leaves free work from
        the first slice on, not after the last one.
        """
        facts_schema = schemas.table("image_facts")
        streamed_dir = f"{self.staging}/streamed"
        self.members_dirs = [streamed_dir]
        with Stage("archives", log) as st:
            if not self.todo_archives:
                delta_io.write_staging(self.spark.createDataFrame([], facts_schema.spark()), streamed_dir,
                                       "image_facts")
                st.done(0, "archives")
                return []
            from pyspark.sql import types as T
            desc_schema = T.StructType([T.StructField(n, T.StringType()) for n in
                                        ("source", "archive", "parts", "missing_after")])
            rows = [{"source": a.source, "archive": a.name, "missing_after": a.missing_after,
                     "parts": json.dumps([{"rel": p.rel, "size": p.size} for p in a.parts])}
                    for a in sorted(self.todo_archives, key=lambda a: -sum(p.size for p in a.parts))]
            streamed = _descriptors(self.spark, rows, desc_schema).mapInArrow(
                tasks.split_archives(self.store, self.cfg.ingest.max_image_bytes, self.scratch, self.SLICES,
                                     self.cfg.ingest.archive_slice_bytes),
                facts_schema.spark())
            owners = {slices.key(a.source, a.name): (a.source, a.name) for a in self.todo_archives}
            taken: set[str] = set()
            with ThreadPoolExecutor(2) as pool:
                split = pool.submit(delta_io.write_staging, streamed, streamed_dir, "image_facts")
                jobs: list = []
                while not wait([split], timeout=SLICE_POLL_SECONDS).done:
                    if all(j.done() for j in jobs):     # one analysis job at a time while the split runs
                        ready = slices.complete(self.scratch, self.SLICES, owners, taken)
                        if ready:
                            jobs.append(pool.submit(self._analyse_slices, ready, len(jobs)))
                split.result()
                listed = self.spark.read.parquet(streamed_dir).where("kind IN ('part', 'slice')").drop(
                    "thumbnail").collect()
                rest = [{"source": r.source, "archive": r.container, "slice": r.image_path}
                        for r in sorted(listed, key=lambda r: r.image_path)
                        if r.kind == "slice" and r.image_path not in taken]
                if rest:
                    jobs.append(pool.submit(self._analyse_slices, rest, len(jobs)))
                for j in jobs:
                    j.result()
            parts = [r for r in listed if r.kind == "part"]
            n_slices = sum(1 for r in listed if r.kind == "slice")
            self.summary.archive_tasks = {
                r.container: r.tasks for r in self.members().where("task IS NOT NULL")
                .groupBy("container").agg(F.countDistinct("task").alias("tasks")).collect()}
            members = sum(p.members or 0 for p in parts)
            broken = [f"{p.image_path}: {p.status}" for p in parts if p.status != "ok"]
            st.done(members, "archive members",
                    f"{len(self.todo_archives)} archives in {n_slices} slices, analysed by {len(jobs)} jobs"
                    + (f"; broken: {broken}" if broken else ""))
        return parts

    def _analyse_slices(self, slices: list[dict], n: int) -> None:
        """One job: the per-image work over these slice files (a task each) -> staging/analysed/<n>."""
        from pyspark.sql import types as T
        slice_schema = T.StructType([T.StructField(c, T.StringType()) for c in ("source", "archive", "slice")])
        path = f"{self.staging}/analysed/{n}"
        delta_io.write_staging(_descriptors(self.spark, slices, slice_schema).mapInArrow(
            tasks.analyze_slices(self.cfg.ingest, self.scratch), schemas.table("image_facts").spark()),
            path, "image_facts")
        self.members_dirs.append(path)

    def members(self) -> DataFrame:
        """Every archive member of this run: analysed ones (with facts) and those not read (too large)."""
        return (self.spark.read.schema(schemas.table("image_facts").spark()).parquet(*self.members_dirs)
                .where("kind = 'member'"))

    # --- jsonl ----------------------------------------------------------------------------------------

    def stage_jsonl(self, files: list[tuple[str, FileInfo]] | None = None) -> list:
        """Parse every line of the JSONL files (those to read) into staging/parsed/<n>; returns the chunk rows
        (small)."""
        from pyspark.sql import types as T

        files = self.todo_jsonl if files is None else files
        size = self.cfg.ingest.jsonl_chunk_bytes
        chunks = [{"source": src, "source_file": f.rel, "chunk": i, "start": start, "end": min(start + size, f.size),
                   "size": min(start + size, f.size) - start}
                  for src, f in files for i, start in enumerate(range(0, max(f.size, 1), size))]
        path = f"{self.staging}/parsed/{len(self.parsed_dirs)}"
        self.parsed_dirs.append(path)
        with Stage("jsonl", log) as st:
            desc = T.StructType([T.StructField("source", T.StringType()), T.StructField("source_file", T.StringType()),
                                 T.StructField("chunk", T.LongType()), T.StructField("start", T.LongType()),
                                 T.StructField("end", T.LongType())])
            stats = []
            if chunks:
                stats = _descriptors(self.spark, chunks, desc, weight="size").mapInArrow(
                    tasks.chunk_stats(self.store), schemas.table("jsonl_chunks").spark()).collect()
            counts = {(r.source_file, r.chunk): r.lines for r in stats}
            unreadable = {r.source_file for r in stats if r.error is not None}
            before, running = [], {}
            for c in chunks:
                if c["source_file"] in unreadable:
                    continue         # logged unreadable in ingest_log, with why
                key = c["source_file"]
                before.append({**c, "newlines_before": running.get(key, 0)})
                running[key] = running.get(key, 0) + counts[(key, c["chunk"])]
            desc_lines = T.StructType(desc.fields + [T.StructField("newlines_before", T.LongType())])
            ingest_cfg = self.cfg.ingest
            ctx_args = {"disciplines": dict(self.cfg.disciplines), "arxiv_sources": list(ingest_cfg.arxiv_sources),
                        "raw_cap_chars": ingest_cfg.raw_cap_chars, "max_line_bytes": ingest_cfg.max_line_bytes}
            parsed_schema = schemas.table("parsed_lines").spark()
            if before:
                _descriptors(self.spark, before, desc_lines, weight="size").mapInArrow(
                    tasks.parse_chunks(self.store, ctx_args), parsed_schema).write.parquet(path)
            else:
                self.spark.createDataFrame([], parsed_schema).write.parquet(path)
            n = self.spark.read.parquet(path).count()
            st.done(n, "lines parsed", f"{len(files)} files, {len(chunks)} chunks"
                    + (f"; unreadable: {sorted(unreadable)}" if unreadable else ""))
        return stats

    # --- resolve --------------------------------------------------------------------------------------

    @property
    def redo_files(self) -> list[str]:
        """The files whose rows this run replaces: those it reads, and those gone from the listing."""
        return self.todo_files + self.changes.gone_files

    @property
    def touched_archives(self) -> list[str]:
        """Archives whose members this run replaces in the index: those it reads, and those gone."""
        return [a.name for a in self.todo_archives] + [name for _, name in self.changes.gone_archives]

    def _reexamined(self, parsed: DataFrame, members: DataFrame, detail_changed: list[str]) -> DataFrame:
        """The lines of files this run does not read whose outcome could change, as parsed records (origin
        'pair' from pairs, 'waiting' from waiting_lines; reason and detail cleared, to be decided again).

        A line's outcome depends on its own record (unchanged: its file was not touched), on the other lines
        of its pair_id (the first by file and line wins) and on its image (the member its path names in the
        archive last by name, else the tree, else missing). So a line can change only when its pair_id has
        a line in a file read or gone this run, or when its (source, image_path) names a member of an
        archive read or gone this run, or, for an image_missing line, when its source's set of broken
        archives changed (its detail names them). Every line of every such pair_id is taken, so that the
        ranking sees all of them: pairs rows and waiting_lines (every quarantined line that was a valid
        record: duplicates and unresolved images) hold them all, with their records.
        """
        redo = _in_list("source_file", self.redo_files)
        pairs = self.lake.read(self.spark, "pairs")
        waiting = self.lake.read(self.spark, "waiting_lines")
        pairs_kept, waiting_kept = pairs.where(f"NOT ({redo})"), waiting.where(f"NOT ({redo})")
        touched = _in_list("container", self.touched_archives)
        paths = (members.select("source", "image_path")
                 .unionByName(self.lake.read(self.spark, "image_index").where(touched).select("source", "image_path"))
                 .distinct())
        ids = [parsed.where("reason IS NULL").select("pair_id"), pairs.where(redo).select("pair_id"),
               pairs_kept.join(paths, ["source", "image_path"], "left_semi").select("pair_id"),
               waiting_kept.join(paths, ["source", "image_path"], "left_semi").select("pair_id")]
        if detail_changed:
            ids.append(waiting_kept.where(F.col("source").isin(detail_changed) & (F.col("reason") == "image_missing"))
                       .select("pair_id"))
        affected = ids[0]
        for more in ids[1:]:
            affected = affected.unionByName(more)
        path = f"{self.staging}/affected/{self.passes}"
        affected.distinct().write.parquet(path)
        affected = self.spark.read.parquet(path)
        cols = schemas.table("parsed_lines").names
        cleared = {c: F.lit(None).cast("string") for c in ("reason", "detail")}
        from_pairs = (pairs_kept.join(affected, "pair_id", "left_semi").withColumns(cleared)
                      .withColumn("raw", F.lit(None).cast("string")).select(*cols).withColumn("_origin", F.lit("pair")))
        from_waiting = (waiting_kept.join(affected, "pair_id", "left_semi").withColumns(cleared)
                        .select(*cols).withColumn("_origin", F.lit("waiting")))
        self.affected = affected
        return from_pairs.unionByName(from_waiting)

    def resolve(self, parts) -> tuple[Outputs, set[str]]:
        """Every line read this run, and every line re-examined (_reexamined), gets its outcome; returns the
        outputs, and the files of pairs that became quarantined rows without their lines as written (the
        caller reads those files and resolves again; empty on the second pass)."""
        with Stage("resolve", log) as st:
            self.passes += 1
            parsed = self.spark.read.schema(schemas.table("parsed_lines").spark()).parquet(*self.parsed_dirs)
            this_run = self.members()
            broken = self._broken(parts)
            detail_changed = sorted(s for s in set(broken) | set(self.changes.broken_before)
                                    if broken.get(s, set()) != self.changes.broken_before.get(s, set()))
            lines_in = parsed.withColumn("_origin", F.lit("new"))
            if self.first_load:
                self.affected = self.spark.createDataFrame([], "pair_id string")
            else:
                lines_in = lines_in.unionByName(self._reexamined(parsed, this_run, detail_changed))
                lines_in.write.parquet(f"{self.staging}/lines_in/{self.passes}")
                lines_in = self.spark.read.parquet(f"{self.staging}/lines_in/{self.passes}")

            valid = lines_in.where("reason IS NULL").withColumn("_valid", F.lit(True))
            rejected = lines_in.where("reason IS NOT NULL").withColumn("_valid", F.lit(False))

            # Repeats: of the lines of one pair_id (every one of them is here: _reexamined), the first by file
            # and line wins.
            order = Window.partitionBy("pair_id").orderBy("source_file", "source_line")
            ranked = (valid.withColumn("_rank", F.row_number().over(order))
                      .withColumn("_first", F.first(F.concat_ws(":", "source_file", "source_line")).over(order)))
            dup = F.col("_rank") > 1
            duplicates = (ranked.where(dup).withColumn("reason", F.lit("duplicate_pair"))
                          .withColumn("detail", F.concat(F.lit("same source and image_path as "), F.col("_first"))))
            unique = ranked.where(~dup).drop("_rank", "_first")

            # Image lookup: of every member of one path, the one in the archive last by name (this run's
            # members, and the index's of archives this run neither read nor lost).
            fact_cols = ["status", "detail", "image_sha256", "image_format", "width", "height", "image_bytes",
                         "image_dhash", "container"]
            # A refresh of few lines looks up only the index rows of the paths its lines name (every row of
            # each such path, so the choice per path is the same), not every path the lake has seen.
            index = (self.lake.read(self.spark, "image_index")
                     .where(f"NOT ({_in_list('container', self.touched_archives)})")
                     .withColumn("member", F.lit(None).cast("bigint")))
            if not self.first_load and lines_in.count() <= INDEX_LOOKUP_LINES:
                named = lines_in.where("reason IS NULL").select("source", "image_path").distinct()
                index = index.join(F.broadcast(named), ["source", "image_path"], "left_semi")
            members = _last_of_each_name(this_run.select("source", "image_path", "member", *fact_cols)
                                         .unionByName(index.select("source", "image_path", "member", *fact_cols)))
            keyed = unique.drop("detail").join(members.drop("member"), ["source", "image_path"], "left")
            lines = (rejected.unionByName(duplicates.drop("_rank", "_first"), allowMissingColumns=True)
                     .unionByName(keyed, allowMissingColumns=True))

            # Records no archive holds: read from the unpacked tree, where the source has one.
            tree_sources = [s.name for s in self.plan.sources if s.has_tree]
            facts_schema = schemas.table("image_facts").spark()
            if tree_sources:
                lines.write.parquet(f"{self.staging}/lines/{self.passes}")
                lines = self.spark.read.parquet(f"{self.staging}/lines/{self.passes}")
                need_tree = lines.where(F.col("reason").isNull() & F.col("status").isNull()
                                        & F.col("source").isin(tree_sources))
                ingest_cfg = self.cfg.ingest
                n_tasks = ingest_cfg.image_tasks or 2 * self.spark.sparkContext.defaultParallelism
                delta_io.write_staging(need_tree.select("source", "image_path").distinct().repartition(n_tasks)
                                       .mapInArrow(tasks.read_tree(self.store, self.cfg.ingest, self.scratch,
                                                                   self.SLICES, ingest_cfg.archive_slice_bytes),
                                                   facts_schema),
                                       f"{self.staging}/tree/{self.passes}", "image_facts")
                tree = self.spark.read.parquet(f"{self.staging}/tree/{self.passes}")
                tree_facts = tree.select("source", "image_path", *[F.col(c).alias(f"_t_{c}") for c in fact_cols])
                lines = lines.join(tree_facts, ["source", "image_path"], "left")
                for c in fact_cols:
                    lines = lines.withColumn(c, F.when(F.col("reason").isNull(), F.coalesce(c, f"_t_{c}"))
                                             .otherwise(F.col(c))).drop(f"_t_{c}")
            else:
                tree = self.spark.createDataFrame([], facts_schema)

            # Every line gets its outcome: a reason, or none for a pair.
            unresolved = F.col("reason").isNull() & F.col("status").isNull()
            resolved = (lines.withColumn("detail", F.when(unresolved, self._missing_detail(broken, tree_sources))
                                         .otherwise(F.col("detail")))
                        .withColumn("status", F.when(unresolved, F.lit("image_missing")).otherwise(F.col("status")))
                        .withColumn("reason", F.coalesce("reason", F.when(F.col("status") != "ok", F.col("status")))))
            resolved.write.parquet(f"{self.staging}/resolved/{self.passes}")
            resolved = self.spark.read.parquet(f"{self.staging}/resolved/{self.passes}")
            unheld = {r.source_file for r in resolved.where("reason IS NOT NULL AND _origin = 'pair'")
                      .select("source_file").distinct().collect()}
            if unheld:
                st.done(0, "lines resolved", f"pairs of {len(unheld)} unread file(s) become quarantined: read them")
                return None, unheld

            pairs = (resolved.where("reason IS NULL").withColumnRenamed("container", "image_container")
                     .withColumn("ingest_run_id", F.lit(self.run_id))
                     .withColumn("ingested_at", F.lit(self.now).cast("timestamp")))
            pairs = pairs.withColumn("row_hash", F.sha2(F.to_json(F.struct(*PAIR_CONTENT)), 256))
            quarantine = (resolved.where("reason IS NOT NULL")
                          .withColumn("ingest_run_id", F.lit(self.run_id))
                          .withColumn("ingested_at", F.lit(self.now).cast("timestamp")))

            blobs = _last_of_each_name(this_run).unionByName(tree).where("status = 'ok'")
            image_index = (this_run.withColumn("_n", F.row_number().over(
                Window.partitionBy("source", "image_path", "container").orderBy(F.col("member").desc())))
                .where("_n = 1").select(*schemas.table("image_index").names[:-1])
                .withColumn("ingest_run_id", F.lit(self.run_id)))
            n_tree = tree.count() if tree_sources else 0
            self.summary.images_read = n_tree + sum(p.members or 0 for p in parts)
            again = resolved.where("_origin <> 'new'")
            self.summary.reexamined, self.summary.moved = again.agg(
                F.count("*"), F.sum(F.when(F.col("_origin") != F.when(F.col("reason").isNull(), "pair")
                                           .otherwise("waiting"), 1).otherwise(0))).first()
            self.summary.moved = self.summary.moved or 0
            st.done(self.summary.reexamined, "lines re-examined",
                    f"{self.summary.moved} changed outcome; {n_tree} tree images read")
        return Outputs(pairs, quarantine, blobs, image_index, again), set()

    def _broken(self, parts) -> dict[str, set]:
        """source -> its archives with a bad part, as the lake will hold them after this run: those logged
        before (of archives this run neither read nor lost) and this run's."""
        touched = set(self.touched_archives)
        broken = {s: {a for a in names if a not in touched} for s, names in self.changes.broken_before.items()}
        for p in parts:
            if p.status != "ok":
                broken.setdefault(p.source, set()).add(p.container)
        return {s: names for s, names in broken.items() if names}

    def _missing_detail(self, broken: dict[str, set], tree_sources: list[str]):
        """The detail of an image_missing line: where it was looked for, and its own source's archives
        that are broken (not another source's)."""
        detail = F.lit("in no archive")
        for s in self.plan.sources:
            text = "in no archive" + (" and not in the unpacked tree" if s.name in tree_sources else "")
            if broken.get(s.name):
                text += f"; archives broken: {', '.join(sorted(broken[s.name]))}"
            detail = F.when(F.col("source") == s.name, F.lit(text)).otherwise(detail)
        return detail

    # --- write ----------------------------------------------------------------------------------------

    def write(self, out: Outputs, parts, chunks) -> tuple[int, int]:
        """Commit the outcome. Each table's commit rewrites only the files holding a row that changed
        (MERGE on the key, with the keys whose rows go): new rows go to new files, and a refresh's cost is
        its change, not the table's."""
        with Stage("write", log) as st:
            redo = _in_list("source_file", self.redo_files)
            pairs = out.pairs.select(*schemas.table("pairs").names)
            quarantine = out.quarantine.select(*schemas.table("quarantine").names)
            waiting = out.quarantine.where("_valid").select(*schemas.table("waiting_lines").names)
            was_waiting = out.again.where("_origin = 'waiting'").select("source_file", "source_line")
            new_images = self._new_images(out.blobs, pairs)
            quarantine_changed = "NOT (t.reason <=> s.reason AND t.detail <=> s.detail AND t.raw <=> s.raw)"

            # The rows that go are named by key (not a whenNotMatchedBySource clause: with one, MERGE rewrites
            # every file of the table), so that each commit rewrites only the files holding a changed row.
            def gone(table: str, where: str, *more: DataFrame) -> DataFrame:
                keys = self.lake.read(self.spark, table).where(where).select(*schemas.table(table).key)
                for m in more:
                    keys = keys.unionByName(m)
                return keys

            # The tables are independent: commit them concurrently (Spark runs jobs from threads).
            # ingest_log goes last, alone: until it commits, a re-run redoes these same files.
            # When every row this run writes is new to the lake, they are appended: the same rows the MERGEs
            # would insert, without their scans of the tables and copies of the source.
            insert_only = self._insert_only()
            if insert_only:
                writes = [lambda: self.lake.add_files("images", [r.asDict() for r in new_images.collect()]),
                          lambda: self.lake.append(self.spark, "pairs", pairs),
                          lambda: self.lake.append(self.spark, "quarantine", quarantine),
                          lambda: self.lake.append(self.spark, "waiting_lines", waiting),
                          lambda: self.lake.append(self.spark, "image_index", out.image_index)]
            else:
                writes = [
                    lambda: self.lake.add_files("images", [r.asDict() for r in new_images.collect()]),
                    lambda: self.lake.merge(self.spark, "pairs", pairs, update_when="t.row_hash <> s.row_hash",
                                            deletes=self.affected),
                    lambda: self.lake.merge(self.spark, "quarantine", quarantine, update_when=quarantine_changed,
                                            deletes=gone("quarantine", redo, was_waiting)),
                    lambda: self.lake.merge(self.spark, "waiting_lines", waiting, update_when=quarantine_changed,
                                            deletes=gone("waiting_lines", redo, was_waiting)),
                ]
                if self.touched_archives:
                    writes.append(lambda: self.lake.merge(
                        self.spark, "image_index", out.image_index,
                        deletes=gone("image_index", _in_list("container", self.touched_archives))))
            with ThreadPoolExecutor(len(writes)) as pool:
                for future in [pool.submit(w) for w in writes]:
                    future.result()

            new = F.col("_origin") == "new"
            per_file = {r.source_file: (r.accepted, r.quarantined) for r in
                        out.pairs.where(new).groupBy("source_file").agg(F.count("*").alias("accepted"))
                        .join(out.quarantine.where(new).groupBy("source_file").agg(F.count("*").alias("quarantined")),
                              "source_file", "full").fillna(0).collect()}
            log_rows = self._log_rows(parts, chunks, per_file) + self._recounted(out.again)
            log_df = self.spark.createDataFrame(log_rows, schemas.table("ingest_log").spark())
            if insert_only:
                self.lake.append(self.spark, "ingest_log", log_df)
            else:
                self.lake.merge(self.spark, "ingest_log", log_df,
                                deletes=gone("ingest_log", _in_list("source_file", self.changes.gone_files)))
            n_pairs = sum(a for a, _ in per_file.values())
            n_quarantine = sum(q for _, q in per_file.values())
            st.done(n_pairs + n_quarantine, "lines written", f"{n_pairs} pairs, {n_quarantine} quarantined; "
                    f"{self.summary.moved} line(s) of other files moved")
        return n_pairs, n_quarantine

    def _insert_only(self) -> bool:
        """Whether every row this run writes has a key no table holds: no line of another file was re-examined,
        nothing is gone, ingest_log names none of the files read (nor a refused one), and no table holds a row
        of them either (a run that crashed after some commits and before ingest_log's leaves such rows: this
        run then merges, as always). The tables are asked by their files' statistics first (no Spark job),
        and read, skipping files by the same statistics, only where those cannot rule a file out."""
        if self.first_load:
            return False        # merge appends into empty tables already
        if self.summary.reexamined or self.changes.gone_files or self.changes.gone_archives:
            return False
        mine = (set(self.todo_files) | {p.rel for a in self.todo_archives for p in a.parts}
                | {r.file.rel for _, r in self.refused})
        if mine & self.changes.logged:
            return False
        keys = {**{t: ("source_file", self.redo_files) for t in ("pairs", "quarantine", "waiting_lines")},
                "image_index": ("container", self.touched_archives)}
        maybe = [(t, c, values) for t, (c, values) in keys.items() if self.lake.may_hold(t, c, values)]
        if not maybe:
            return True
        held = [self.lake.read(self.spark, t).where(_in_list(c, values)).select(F.col(c).alias("k"))
                for t, c, values in maybe]
        for more in held[1:]:
            held[0] = held[0].unionByName(more)
        return not held[0].limit(1).collect()

    def _recounted(self, again: DataFrame) -> list[dict]:
        """The ingest_log rows of files not read whose counts changed (a re-examined line moved between pairs
        and quarantine): their accepted and quarantined as the lake now holds them."""
        delta = {r.source_file: r.d for r in again.groupBy("source_file").agg(
            (F.sum(F.col("reason").isNull().cast("int")) - F.sum((F.col("_origin") == "pair").cast("int"))).alias("d"))
            .where("d <> 0").collect()}
        if not delta:
            return []
        rows = [r for r in self.lake.rows("ingest_log", schemas.table("ingest_log").names)
                if r["source_file"] in delta]
        return [{**r, "accepted": r["accepted"] + delta[r["source_file"]],
                 "quarantined": r["quarantined"] - delta[r["source_file"]]} for r in rows]

    def _new_images(self, blobs: DataFrame, pairs: DataFrame) -> DataFrame:
        """The images files (tasks.write_images: one images_files row each) of content the lake does not
        hold yet, written without shuffling any image bytes or passing them through the JVM; committed
        by the caller.

        The choice of one (source, image_path) per sha256, its discipline (that of the lowest pair_id
        using it, else the fallback) and the anti-join with what is stored all run on key columns; the
        facts then meet that small table in a broadcast join, and the bytes are read back from the
        slice files only for the rows written. Re-running adds nothing: content-addressed.
        """
        keys = blobs.select("image_sha256", "source", "image_path")
        first = (keys.groupBy("image_sha256").agg(F.min(F.struct("source", "image_path")).alias("k"))
                 .select("image_sha256", "k.source", "k.image_path"))
        used = pairs.groupBy("image_sha256").agg(
            F.min(F.struct("pair_id", "discipline")).getField("discipline").alias("discipline"))
        stored = self.lake.read(self.spark, "images").select("image_sha256")
        chosen = (first.join(stored, "image_sha256", "left_anti").join(used, "image_sha256", "left")
                  .withColumn("discipline", F.coalesce("discipline",
                                                       F.lit(self.cfg.disciplines.get("fallback", "unknown")))))
        chosen.write.parquet(f"{self.staging}/chosen_images")
        chosen = self.spark.read.parquet(f"{self.staging}/chosen_images")
        if chosen.count() <= BROADCAST_KEYS:
            chosen = F.broadcast(chosen)
        return (blobs.join(chosen, ["image_sha256", "source", "image_path"])
                .select("image_sha256", "discipline", F.col("image_format").alias("format"), "width", "height",
                        "image_bytes", "image_dhash", "thumbnail", "thumbnail_width", "thumbnail_height",
                        F.col("source").alias("first_source"), F.col("image_path").alias("first_image_path"),
                        F.lit(self.run_id).alias("ingest_run_id"),
                        F.lit(self.now).cast("timestamp").alias("ingested_at"), "slice", "slice_row")
                .mapInArrow(tasks.write_images(self.scratch, self.images_folder, f"part-{self.run_id}"),
                            schemas.table("images_files").spark()))

    @property
    def images_folder(self) -> Store:
        return self.lake.store("images")

    def _log_rows(self, parts, chunks, per_file) -> list[dict]:
        """ingest_log rows: one per JSONL file and per archive part read this run."""
        digests: dict[str, list] = {}
        for c in sorted(chunks, key=lambda c: (c.source_file, c.chunk)):
            digests.setdefault(c.source_file, []).append(c)
        rows = []
        for source, f in self.todo_jsonl:
            accepted, quarantined = per_file.get(f.rel, (0, 0))
            mine = digests.get(f.rel, [])
            errors = [c.error for c in mine if c.error]
            got = sum(c.bytes for c in mine)
            # Done only when every byte was read: a file read short is logged incomplete and read again next
            # run; one that cannot be opened (a FIFO, a link out of the root) unreadable, until it changes.
            status, detail = "ok", None
            if errors:
                status, detail = "unreadable", errors[0]
            elif got != f.size:
                status, detail = "incomplete", f"read {got} of {f.size} bytes (the file changed while read?)"
            checksum = None                 # of a whole file only: one chunk's digest, else the digest of its digests
            if status == "ok" and mine:
                checksum = (mine[0].sha256 if len(mine) == 1
                            else hashlib.sha256("".join(c.sha256 for c in mine).encode()).hexdigest())
            rows.append(log_row(source, f, "jsonl", self.run_id, self.now, checksum=checksum,
                                read=accepted + quarantined, accepted=accepted, quarantined=quarantined,
                                status=status, detail=detail))
        part_info = {(a.name, p.rel): p for a in self.todo_archives for p in a.parts}
        for p in parts:
            rows.append(log_row(p.source, part_info[(p.container, p.image_path)], "archive_part", self.run_id,
                                self.now, archive=p.container, checksum=p.image_sha256, read=p.members or 0,
                                status=p.status, detail=p.detail))
        return rows + [refused_row(r, self.run_id, self.now) for r in self.refused]
