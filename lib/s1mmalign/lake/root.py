"""The lake as one object: `Lake`, built once per job, over a root on local disk or S3.

It carries what travels with the root everywhere: the S3 settings (one `config.S3Conf`, the same for
boto3, S3A, pyarrow and delta-rs), the catalog database, and the lease (lease.py) once the job takes it.
Every table operation goes through it: `path`, `exists`, `version`, `rows` (no Spark), `read`, and the
writes `merge`, `append`, `replace`, `add_files`, each of which first checks that this job still holds
the lake's lease; a write through a Lake whose job holds none is an error. `store(rel)` gives the files
beside the tables (staging, Data Docs, the lease itself) as a storage.Store.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence
from urllib.parse import unquote, urlparse

from s1mmalign.config import Config, S3Conf
from s1mmalign.errors import LakeError, UsageError
from s1mmalign.lake import delta_io, lease, schemas
from s1mmalign.lake.storage import Store, hadoop_uri, open_data_file, remote

log = logging.getLogger(__name__)


class NoLease(LakeError):
    """A write through a Lake whose job took no lease (one writer per lake: lease.py)."""


class Lake:
    """One lake root and what travels with it. `uri` is as Spark reaches it: an absolute local path, or
    s3a://bucket/prefix for a lake on S3 (given as s3:// or s3a://)."""

    def __init__(self, uri: str, s3: S3Conf | None = None, database: str = "s1mmalign",
                 lease_ttl: float = 120.0, lease_heartbeat: float = 20.0):
        self.remote = remote(uri)
        self.uri = hadoop_uri(uri).rstrip("/") if self.remote else os.path.abspath(uri)
        self.s3 = s3 or S3Conf()
        self.database = database
        self.lease_ttl, self.lease_heartbeat = lease_ttl, lease_heartbeat
        self.lease: lease.Lease | None = None
        self.bytes_written: dict[str, int] = {}     # table -> bytes of data files this Lake's writes added

    @classmethod
    def open(cls, uri: str, cfg: Config, *, existing: bool = True, flag: str = "--lake") -> "Lake":
        """The lake a job names (`flag`): a local folder (existing: one already), or s3://bucket/prefix;
        UsageError, in one line, otherwise."""
        if remote(uri):
            parsed = urlparse(uri)
            if parsed.scheme not in ("s3", "s3a") or not parsed.netloc:
                raise UsageError(f"{flag} {uri}: use a local folder or s3://bucket/prefix")
        elif existing and not os.path.isdir(uri):
            raise UsageError(f"{flag} {uri} is not a folder")
        elif os.path.exists(uri) and not os.path.isdir(uri):
            raise UsageError(f"{flag} {uri} exists and is not a folder")
        return cls(uri, cfg.s3, cfg.catalog.database, cfg.lease.ttl_seconds, cfg.lease.heartbeat_seconds)

    def __repr__(self) -> str:
        return f"Lake({self.uri!r}{', leased' if self.lease else ''})"

    def __str__(self) -> str:
        return self.uri

    # --- the lease ----------------------------------------------------------------------------------

    def hold(self, job: str | None = None) -> "Lake":
        """Take the lake's lease for this process (lease.hold: once per lake, released at exit); LeaseHeld
        when another job holds it."""
        if not self.remote:
            os.makedirs(self.uri, exist_ok=True)
        self.lease = lease.hold(self.store(), self.uri, self.lease_ttl, self.lease_heartbeat, job)
        return self

    def check_lease(self) -> None:
        """NoLease when this job took no lease, LeaseLost when it took one and lost it (called before every
        commit)."""
        if self.lease is None:
            raise NoLease(f"lake {self.uri}: a write by a job that holds no lease (Lake.hold takes it)")
        self.lease.check()

    # --- where things are ---------------------------------------------------------------------------

    def path(self, name: str) -> str:
        """Where table (or folder) `name` lives under the root, as Spark reaches it."""
        return f"{self.uri}/{name}" if self.remote else str(Path(self.uri, name).resolve())

    def store(self, rel: str = "") -> Store:
        """The files under the root (or under its folder `rel`), through boto3 on S3."""
        return Store.from_uri(self.path(rel) if rel else self.uri, self.s3)

    def delta_rs(self, name: str) -> tuple[str, dict[str, str]]:
        """The URI and storage options under which delta-rs reaches table `name` (s3a:// is s3:// there;
        endpoint, region, path style and attempts as S3A has them; credentials from the same AWS chain). One writer
        per lake holds its lease, so delta-rs may commit by copy-if-absent without a lock service."""
        path = self.path(name)
        if not self.remote:
            return path, {}
        s3 = self.s3
        options = {"AWS_S3_ALLOW_UNSAFE_RENAME": "true", "AWS_REGION": s3.region,
                   "max_retries": str(s3.max_attempts - 1)}         # object_store's: retries after the first
        if s3.endpoint_url:
            options["AWS_ENDPOINT_URL"] = s3.endpoint_url
            if s3.endpoint_url.startswith("http://"):
                options["AWS_ALLOW_HTTP"] = "true"
        if s3.path_style_access:
            options["AWS_VIRTUAL_HOSTED_STYLE_REQUEST"] = "false"
        return "s3://" + path.split("://", 1)[1], options

    def data_files(self, name: str) -> list[str]:
        """The URIs of the data files of table `name`'s current version (delta-rs, no Spark)."""
        from deltalake import DeltaTable

        uri, options = self.delta_rs(name)
        return DeltaTable(uri, storage_options=options).file_uris()

    def may_hold(self, name: str, column: str, values) -> bool:
        """Whether a data file of table `name` may hold a row whose `column` is one of `values`, from the min and
        max statistics its log keeps per file (delta-rs, no Spark): False only when every file's range leaves
        out every value. A file without statistics may hold anything. (Delta cuts long strings' statistics
        short, the minimum to a prefix and the maximum to a prefix and a last code point, so a range only
        widens.)"""
        import bisect

        import pyarrow as pa
        from deltalake import DeltaTable

        wanted = sorted(values)
        if not wanted:
            return False
        uri, options = self.delta_rs(name)
        actions = pa.table(DeltaTable(uri, storage_options=options).get_add_actions(flatten=True))
        if not actions.num_rows:
            return False
        lo, hi = f"min.{column}", f"max.{column}"
        if lo not in actions.column_names or hi not in actions.column_names:
            return True
        for low, high in zip(actions.column(lo).to_pylist(), actions.column(hi).to_pylist(), strict=True):
            if low is None or high is None:
                return True
            i = bisect.bisect_left(wanted, low)
            if i < len(wanted) and wanted[i] <= high:
                return True
        return False

    def files_added(self, name: str, since: int, until: int) -> tuple[list[str] | None, str]:
        """(the data files table `name` gained after version `since` up to `until`, as Spark reads them, and
        how many there were in words), from its log by delta-rs; or (None, why not) when rows may have gone as
        well: a file removed (a delete, an OPTIMIZE), deletion vectors on, or either version's log not at
        hand. For a table that only grows by appends, the new rows are the rows of those files."""
        from deltalake import DeltaTable
        from deltalake.exceptions import DeltaError

        uri, options = self.delta_rs(name)
        try:
            old, new = (DeltaTable(uri, version=v, storage_options=options) for v in (since, until))
            features = set(new.protocol().writer_features or ())
            before, after = set(old.file_uris()), set(new.file_uris())
        except DeltaError as exc:
            return None, f"{name}'s log from version {since} to {until} unreadable ({str(exc).splitlines()[0][:120]})"
        if "deletionVectors" in features:
            return None, f"{name} has deletion vectors"
        if before - after:
            return None, f"{len(before - after)} file(s) of {name} removed since version {since}"
        scheme = self.path(name).split("://", 1)[0] if self.remote else None     # delta-rs' s3:// is S3A's s3a://
        added = [f"{scheme}://{u.split('://', 1)[1]}" if scheme else u for u in sorted(after - before)]
        return added, f"{len(added)} file(s) added to {name} since version {since}"

    # --- reading without Spark ----------------------------------------------------------------------

    def exists(self, name: str, spark=None) -> bool:
        """Whether table `name` exists (has a commit): a local lake from its files, on S3 by listing its log
        (or through Spark's Delta when given a session)."""
        path = self.path(name)
        if not self.remote:
            return os.path.isfile(os.path.join(path, "_delta_log", f"{0:020d}.json"))
        if spark is None:
            return any(f.rel.endswith(".json") for f in self.store().list_dir(f"{name}/_delta_log")[1])
        from delta.tables import DeltaTable

        return DeltaTable.isDeltaTable(spark, path)

    def version(self, name: str, spark=None) -> int:
        """The newest commit version of table `name` (-1: none); a local lake from its log's file names."""
        return self.last_commit(name, spark)[0]

    def last_commit(self, name: str, spark=None) -> tuple[int, dict[str, str]]:
        """(version, operationMetrics) of table `name`'s newest commit: on a local lake from its commit file,
        else from Delta's history."""
        if not self.remote:
            return delta_io.last_local_commit(Path(self.path(name), "_delta_log"))
        from delta.tables import DeltaTable

        row = DeltaTable.forPath(spark, self.path(name)).history(1).select("version", "operationMetrics").first()
        return (row[0], dict(row[1] or {})) if row else (-1, {})

    def rows(self, name: str, columns: Sequence[str]) -> list[dict]:
        """The current rows of table `name`, only `columns`, read without Spark: for the small metadata tables
        a run reads before its first Spark job (ingest_log), which then needs no JVM, and for tests that read
        a table with another engine than the one that wrote it.

        delta-rs gives the snapshot's files; pyarrow reads them through its own file systems when a file's
        rows are the table's (no deletion vectors). Not delta-rs's pyarrow dataset: its Python file system
        handler made a short-lived process (jobs/plan.py) abort at exit ("terminate called without an active
        exception") now and then. A table with deletion vectors (pairs) is read through delta-rs's own query
        engine, which applies them."""
        import pyarrow as pa
        import pyarrow.parquet as pq
        from deltalake import DeltaTable, QueryBuilder

        uri, options = self.delta_rs(name)
        table = DeltaTable(uri, storage_options=options)
        if "deletionVectors" in (table.protocol().reader_features or ()):
            query = "SELECT " + ", ".join('"' + c.replace('"', '""') + '"' for c in columns) + " FROM t"
            out = pa.table(QueryBuilder().register("t", table).execute(query).read_all()).to_pylist()
        else:
            out = []
            for file in table.file_uris():
                with open_data_file(file, self.s3) as source:
                    out += pq.ParquetFile(source).read(columns=list(columns)).to_pylist()
        # pyarrow gives a nanosecond timestamp as pandas' Timestamp: rows hold Python datetimes, as Spark's do
        return [{k: v.to_pydatetime() if hasattr(v, "to_pydatetime") else v for k, v in r.items()} for r in out]

    def holds_no_file(self, name: str) -> bool:
        """Whether table `name`'s current version has no data file (read from its log, no Spark job)."""
        return not self.data_files(name)

    def require(self, tables: Sequence[str]) -> None:
        """LakeError unless every one of `tables` exists, checked without Spark (jobs: once, before Spark)."""
        missing = [t for t in tables if not self.exists(t)]
        if missing:
            jobs = " and ".join(sorted({schemas.producer(t) for t in missing}))
            raise LakeError(f"lake {self.uri} has no {', '.join(missing)} table(s): run {jobs} first")

    def missing_files(self, tables: Sequence[str]) -> list[str]:
        """The data files the current version of each of `tables` (those that exist) names that the store
        lacks, as "<table>/<path>", read without Spark (delta-rs for the log, one listing of each table)."""
        missing: list[str] = []
        for name in tables:
            if not self.exists(name):
                continue
            uri, _ = self.delta_rs(name)
            root = urlparse(uri).path.rstrip("/") if "://" in uri else uri.rstrip("/")
            present = self.store(name).list_tree("")
            for file in self.data_files(name):
                parsed = urlparse(file)
                full = unquote(parsed.path) if parsed.scheme in ("s3", "s3a", "file") else file
                rel = full[len(root):].lstrip("/") if full.startswith(root) else full
                if rel not in present:
                    missing.append(f"{name}/{rel}")
        return missing

    def require_intact(self, tables: Sequence[str]) -> None:
        """LakeError ("lake damaged") when a table's log names data files the store lacks: every read of the
        table would fail on them, and the rows they held are lost until they are restored."""
        missing = self.missing_files(tables)
        if missing:
            raise LakeError(f"lake {self.uri} is damaged: {len(missing)} data file(s) its tables' logs name are "
                            f"missing ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); restore "
                            f"them from a copy, or restore the table to an earlier version "
                            f"(RESTORE TABLE ... TO VERSION AS OF)")

    def damaged_logs(self) -> list[str]:
        """Commit files of a local lake's tables that are not JSON lines (delta_io.damaged_logs)."""
        return [] if self.remote else delta_io.damaged_logs(Path(self.uri))

    # --- Spark: tables and catalog ------------------------------------------------------------------

    def read(self, spark, name: str, version: int | None = None):
        """The current rows of table `name` (or those of an older `version`: Delta's time travel)."""
        reader = spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        return reader.load(self.path(name))

    def properties(self, spark, name: str) -> dict[str, str]:
        """Table `name`'s properties at its latest version (SHOW TBLPROPERTIES: from the log, no Spark job)."""
        return delta_io.properties(spark, self.path(name))

    def ensure_tables(self, spark, job: str = "ingest") -> None:
        """Create the lake tables `job` writes that are missing (schema from schemas/); register them."""
        if not self.remote:
            os.makedirs(self.uri, exist_ok=True)
        self._database(spark)
        for name in schemas.lake_tables(job):
            path = self.path(name)      # fast path: a local table whose first commit exists (a crash leaves none)
            made = not self.remote and os.path.isfile(os.path.join(path, "_delta_log", f"{0:020d}.json"))
            delta_io.ensure_table(spark, path, schemas.table(name), created=made)
            if schemas.table(name).catalog and not spark.catalog.tableExists(f"{self.database}.{name}"):
                spark.sql(self.register_statement(name))

    def register_tables(self, spark) -> list[str]:
        """Register every catalog table the lake holds as database.<table> (a no-op for those already in the
        catalog: a local lake's Hive metastore keeps them; an object-store lake's in-memory catalog starts
        empty in each session); returns their names."""
        self._database(spark)
        names = [n for n in schemas.lake_tables() if schemas.table(n).catalog and self.exists(n, spark)]
        for name in names:
            spark.sql(self.register_statement(name))
        return names

    def register_statement(self, name: str) -> str:
        return f"CREATE TABLE IF NOT EXISTS {self.database}.{name} USING DELTA LOCATION '{self.path(name)}'"

    def _database(self, spark) -> None:
        if not spark.catalog.databaseExists(self.database):
            spark.sql(f"CREATE DATABASE IF NOT EXISTS {self.database}")

    # --- writes: each checks the lease first --------------------------------------------------------

    def merge(self, spark, name: str, source_df, *, update_when: str | None = None,
              deletes=None) -> dict[str, str]:
        """MERGE source_df into table `name` on its key from schemas/: insert new rows, update changed ones;
        returns the commit's metrics (numTargetRowsInserted, ...).

        update_when: a condition on t./s. that limits updates (e.g. only rows whose row_hash differs);
        deletes: a DataFrame of keys (the key columns) whose rows are deleted, in the same commit.
        Only the files holding a matched or deleted row are rewritten; new rows go to new files. (No
        whenNotMatchedBySource clause: with one, Delta's MERGE rewrites every file of the table.)
        Into a table that holds no file yet (a lake's first load) the rows are appended instead, the same
        rows a MERGE would insert, without its join against nothing and its materialized copy of the source.
        """
        from delta.tables import DeltaTable
        from pyspark.sql import functions as F

        if self.holds_no_file(name):
            metrics = self.append(spark, name, source_df)
            return {**metrics, "numTargetRowsInserted": metrics.get("numOutputRows", "0"),
                    "numTargetRowsUpdated": "0", "numTargetRowsDeleted": "0"}
        tdef = schemas.table(name)
        before = self.version(name, spark)
        target = DeltaTable.forPath(spark, self.path(name)).alias("t")
        on = " AND ".join(f"t.{k} = s.{k}" for k in tdef.key)
        source = source_df.select(*tdef.names)
        if deletes is not None:
            marked = deletes.select(*tdef.key).join(source.select(*tdef.key), list(tdef.key), "left_anti")
            source = (source.withColumn("_gone", F.lit(False))
                      .unionByName(marked.withColumn("_gone", F.lit(True)), allowMissingColumns=True))
        merge = target.merge(source.alias("s"), on)
        if deletes is not None:
            merge = merge.whenMatchedDelete(condition="s._gone")
            keep = "NOT s._gone"
            merge = (merge.whenMatchedUpdate(condition=f"{keep} AND ({update_when})" if update_when else keep,
                                             set={c: f"s.{c}" for c in tdef.names})
                     .whenNotMatchedInsert(condition=keep, values={c: f"s.{c}" for c in tdef.names}))
        else:
            merge = merge.whenMatchedUpdateAll(condition=update_when).whenNotMatchedInsertAll()
        self.check_lease()
        merge.execute()
        return self._logged(spark, name, "merge", before)

    def append(self, spark, name: str, df) -> dict[str, str]:
        """Append rows (for callers that have already excluded what the table holds)."""
        before = self.version(name, spark)
        self.check_lease()
        delta_io.writer(df, name).mode("append").save(self.path(name))
        return self._logged(spark, name, "append", before)

    def replace(self, spark, name: str, df, where: str | None = None) -> dict[str, str]:
        """Atomically replace the rows matching `where` (every row: None) with df, in one commit; into a
        table with no file yet, an append."""
        if where is not None and self.holds_no_file(name):
            return self.append(spark, name, df)
        before = self.version(name, spark) if self.exists(name, spark) else -1
        self.check_lease()
        write = delta_io.writer(df, name).mode("overwrite")
        if where is not None:
            write = write.option("replaceWhere", where)
        write.save(self.path(name))
        return self._logged(spark, name, "replace all" if where is None else f"replace where {where[:80]}", before)

    def add_files(self, name: str, files: list[dict]) -> int:
        """Commit Parquet files that tasks wrote under table `name`'s folder (image_files.commit); returns
        the rows added."""
        from s1mmalign.lake import image_files

        if not files:
            log.info("write %s: add files (no commit: nothing to write)", name)
            return 0
        self.check_lease()
        self.bytes_written[name] = self.bytes_written.get(name, 0) + sum(int(f["bytes"]) for f in files)
        return image_files.commit(self, name, files)

    def _logged(self, spark, name: str, what: str, before: int) -> dict[str, str]:
        """Log what a write did: its commit's metrics, or that it committed nothing (never an older commit's)."""
        after, metrics = self.last_commit(name, spark)
        if after == before:
            log.info("write %s: %s (no commit: nothing to write)", name, what)
            return {}
        added = metrics.get("numTargetBytesAdded", metrics.get("numOutputBytes", metrics.get("numAddedBytes", "0")))
        self.bytes_written[name] = self.bytes_written.get(name, 0) + int(added or 0)
        keys = ("numTargetRowsInserted", "numTargetRowsUpdated", "numTargetRowsDeleted", "numOutputRows",
                "numDeletedRows", "numTargetFilesRemoved", "numTargetFilesAdded")
        shown = ", ".join(f"{k}={metrics[k]}" for k in keys if k in metrics) + f", bytes added={int(added or 0)}"
        log.info("write %s: %s (%s)", name, what, shown or "no metrics")
        return metrics
