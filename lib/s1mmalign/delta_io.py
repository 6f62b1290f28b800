"""Delta tables under a lake root: creation from schemas/, catalog registration, idempotent writes."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

from s1mmalign import lease, schemas
from s1mmalign.errors import LakeError

log = logging.getLogger(__name__)


def table_path(lake: str, name: str) -> str:
    """Where table `name` lives under the lake root (a local path, or the lake's URI: s3a:// for S3)."""
    return str(Path(lake, name).resolve()) if "://" not in lake else f"{lake.rstrip('/')}/{name}"


def damaged_logs(lake: str) -> list[str]:
    """Commit files Delta would have to read (after each table's last checkpoint) that are not JSON lines
    (a truncated or overwritten commit), as one phrase each; local lakes only, read without Spark."""
    import json

    found: list[str] = []
    if "://" in lake:
        return found
    for name in schemas.lake_tables():
        log_dir = Path(lake, name, "_delta_log")
        since = -1
        try:
            since = int(json.loads((log_dir / "_last_checkpoint").read_text())["version"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        for number, commit in _commits(log_dir):
            if number <= since:
                continue
            try:
                text = commit.read_text(encoding="utf-8")
                lines = text.splitlines()
                if not lines:
                    raise ValueError("empty")
                for line in lines:
                    json.loads(line)
            except (OSError, ValueError) as exc:
                found.append(f"{name}/_delta_log/{commit.name} ({type(exc).__name__})")
    return found


def _commits(log_dir: Path) -> list[tuple[int, Path]]:
    """(version, file) of a Delta log's commit files, oldest first; none when there is no log."""
    if not log_dir.is_dir():
        return []
    return sorted((int(p.stem), p) for p in log_dir.glob("[0-9]" * 20 + ".json"))


def require_tables(lake: str, tables: Sequence[str], s3=None) -> None:
    """LakeError unless every one of `tables` exists, checked without Spark (s3: the S3 settings for an
    object-store lake). The jobs call it once, before Spark starts."""
    missing = [t for t in tables if not exists(None, lake, t, s3)]
    if missing:
        jobs = " and ".join(sorted({schemas.producer(t) for t in missing}))
        raise LakeError(f"lake {lake} has no {', '.join(missing)} table(s): run {jobs} first")


def missing_files(lake: str, tables: Sequence[str], s3=None) -> list[str]:
    """The data files the current version of each of `tables` (those that exist) names that the store lacks,
    as "<table>/<path>", read without Spark (delta-rs for the log, one listing of each table's folder)."""
    from urllib.parse import unquote, urlparse

    from deltalake import DeltaTable

    from s1mmalign.storage import Store

    missing: list[str] = []
    for name in tables:
        if not exists(None, lake, name, s3):
            continue
        path = table_path(lake, name)
        uri, options = _delta_rs_location(path, s3)
        root = urlparse(uri).path.rstrip("/") if "://" in uri else uri.rstrip("/")
        endpoint, region, _ = _s3_access(s3)
        present = Store.from_uri(uri, endpoint, region).list_tree("")
        for file in DeltaTable(uri, storage_options=options).file_uris():
            parsed = urlparse(file)
            full = unquote(parsed.path) if parsed.scheme in ("s3", "s3a", "file") else file
            rel = full[len(root):].lstrip("/") if full.startswith(root) else full
            if rel not in present:
                missing.append(f"{name}/{rel}")
    return missing


def require_intact(lake: str, tables: Sequence[str], s3=None) -> None:
    """LakeError ("lake damaged") when a table's log names data files the store lacks: every read of the
    table would fail on them, and the rows they held are lost until they are restored."""
    missing = missing_files(lake, tables, s3)
    if missing:
        raise LakeError(f"lake {lake} is damaged: {len(missing)} data file(s) its tables' logs name are missing "
                        f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); restore them from a copy, "
                        f"or restore the table to an earlier version (RESTORE TABLE ... TO VERSION AS OF)")


def properties(spark, path: str) -> dict[str, str]:
    """A Delta table's properties at its latest version (SHOW TBLPROPERTIES: read from the log's
    metadata, no Spark job, unlike DESCRIBE DETAIL)."""
    return {r.key: r.value for r in spark.sql(f"SHOW TBLPROPERTIES delta.`{path}`").collect()}


def ensure_tables(spark, lake: str, database: str, job: str = "ingest") -> None:
    """Create the lake tables `job` writes that are missing (schema from schemas/); register them."""
    from delta.tables import DeltaTable

    local = "://" not in lake
    if local:
        os.makedirs(lake, exist_ok=True)
    if not spark.catalog.databaseExists(database):
        spark.sql(f"CREATE DATABASE IF NOT EXISTS {database}")
    for name in schemas.lake_tables(job):
        tdef = schemas.table(name)
        path = table_path(lake, name)
        # Fast path: a local table whose first commit exists (a crash mid-create leaves none).
        if not (local and os.path.isfile(os.path.join(path, "_delta_log", f"{0:020d}.json"))):
            builder = DeltaTable.createIfNotExists(spark).location(path).addColumns(tdef.spark())
            if tdef.partition_by:
                builder = builder.partitionedBy(*tdef.partition_by)
            for key, value in tdef.properties:
                builder = builder.property(key, value)
            builder.execute()
        _add_missing_columns(spark, path, tdef)
        if tdef.properties:   # a table made by an earlier version lacks them: set them once
            have = properties(spark, path)
            missing = {k: v for k, v in tdef.properties if have.get(k) != v}
            if missing:
                pairs = ", ".join(f"'{k}' = '{v}'" for k, v in missing.items())
                spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ({pairs})")
        if tdef.catalog and not spark.catalog.tableExists(f"{database}.{name}"):
            spark.sql(register_statement(lake, database, name))


def _add_missing_columns(spark, path: str, tdef) -> None:
    """A table made by an earlier version lacks a (nullable) column that schemas/ has since gained: add it
    (a metadata-only commit; its existing rows read it as null)."""
    have = {f.name for f in spark.read.format("delta").load(path).schema.fields}
    missing = [f for f in tdef.spark().fields if f.name not in have]
    if missing:
        columns = ", ".join(f"{f.name} {f.dataType.simpleString()}" for f in missing)
        log.info("table %s: adding column(s) %s", tdef.name, columns)
        spark.sql(f"ALTER TABLE delta.`{path}` ADD COLUMNS ({columns})")


def register_tables(spark, lake: str, database: str) -> list[str]:
    """Register every catalog table the lake holds as database.<table> (a no-op for those already in the
    catalog: a local lake's Hive metastore keeps them; an object-store lake's in-memory catalog starts
    empty in each session); returns their names."""
    if not spark.catalog.databaseExists(database):
        spark.sql(f"CREATE DATABASE IF NOT EXISTS {database}")
    names = [n for n in schemas.lake_tables() if schemas.table(n).catalog and exists(spark, lake, n)]
    for name in names:
        spark.sql(register_statement(lake, database, name))
    return names


def register_statement(lake: str, database: str, name: str) -> str:
    return f"CREATE TABLE IF NOT EXISTS {database}.{name} USING DELTA LOCATION '{table_path(lake, name)}'"


def last_metrics(spark, lake: str, name: str) -> dict[str, str]:
    """operationMetrics of the newest commit of a table."""
    return _last_commit(spark, lake, name)[1]


def _last_commit(spark, lake: str, name: str) -> tuple[int, dict[str, str]]:
    """(version, operationMetrics) of a table's newest commit: on a local lake from its commit file (no
    Spark job), else from Delta's history."""
    import json

    from delta.tables import DeltaTable

    if "://" not in lake:
        commits = _commits(Path(table_path(lake, name), "_delta_log"))
        if not commits:
            return -1, {}
        number, commit = commits[-1]
        with open(commit, encoding="utf-8") as lines:       # commitInfo is a commit's first action
            for line in lines:
                info = json.loads(line).get("commitInfo") if line.strip() else None
                if info is not None:
                    return number, {k: str(v) for k, v in (info.get("operationMetrics") or {}).items()}
        return number, {}
    row = DeltaTable.forPath(spark, table_path(lake, name)).history(1).select("version", "operationMetrics").first()
    return (row[0], dict(row[1] or {})) if row else (-1, {})


def version(spark, lake: str, name: str) -> int:
    """The newest commit version of a table (a local lake: from its log's file names, without Spark)."""
    if "://" not in lake:
        commits = _commits(Path(table_path(lake, name), "_delta_log"))
        return commits[-1][0] if commits else -1
    return _last_commit(spark, lake, name)[0]


def _log_write(spark, lake: str, name: str, what: str, before: int) -> dict[str, str]:
    """Log what a write did: its commit's metrics, or that it committed nothing (never an older commit's)."""
    after, metrics = _last_commit(spark, lake, name)
    if after == before:
        log.info("write %s: %s (no commit: nothing to write)", name, what)
        return {}
    keys = ("numTargetRowsInserted", "numTargetRowsUpdated", "numTargetRowsDeleted", "numOutputRows",
            "numDeletedRows")
    shown = ", ".join(f"{k}={metrics[k]}" for k in keys if k in metrics)
    log.info("write %s: %s (%s)", name, what, shown or "no metrics")
    return metrics


def _writer(df, name: str):
    """A Delta writer for table `name`'s columns with its write options from schemas/."""
    tdef = schemas.table(name)
    return df.select(*tdef.names).write.format("delta").options(**dict(tdef.write_options))


def write_staging(df, path: str, name: str) -> None:
    """Write df as a run's Parquet staging at `path`, with intermediate `name`'s write options from schemas/."""
    df.write.mode("overwrite").options(**dict(schemas.table(name).write_options)).parquet(path)


def merge_on_key(spark, lake: str, name: str, source_df, *, update_when: str | None = None,
                 delete_unmatched_when: str | None = None, s3=None) -> dict[str, str]:
    """MERGE source_df into table `name` on its key from schemas/: insert new rows, update changed ones;
    returns the commit's metrics (numTargetRowsInserted, ...).

    update_when: a condition on t./s. that limits updates (e.g. only rows whose row_hash differs);
    delete_unmatched_when: target rows matching it but absent from source_df are deleted.
    Into a table that holds no file yet (a lake's first load) the rows are appended instead, the same
    rows a MERGE would insert, without its join against nothing and its materialized copy of the source
    (s3: the S3 settings of a lake there; without them such a lake always MERGEs).
    """
    from delta.tables import DeltaTable

    tdef = schemas.table(name)
    if _holds_no_file(lake, name, s3):
        metrics = append(spark, lake, name, source_df)
        return {**metrics, "numTargetRowsInserted": metrics.get("numOutputRows", "0"), "numTargetRowsUpdated": "0",
                "numTargetRowsDeleted": "0"}
    before = version(spark, lake, name)
    target = DeltaTable.forPath(spark, table_path(lake, name)).alias("t")
    on = " AND ".join(f"t.{k} = s.{k}" for k in tdef.key)
    merge = target.merge(source_df.select(*tdef.names).alias("s"), on)
    merge = merge.whenMatchedUpdateAll(condition=update_when).whenNotMatchedInsertAll()
    if delete_unmatched_when:
        merge = merge.whenNotMatchedBySourceDelete(condition=delete_unmatched_when)
    lease.check(lake)
    merge.execute()
    return _log_write(spark, lake, name, "merge", before)


def _holds_no_file(lake: str, name: str, s3) -> bool:
    """Whether table `name`'s current version has no data file (read from its log by delta-rs, no Spark
    job); False when that cannot be known here (an object-store lake without its S3 settings)."""
    from deltalake import DeltaTable

    if "://" in lake and s3 is None:
        return False
    uri, options = _delta_rs_location(table_path(lake, name), s3)
    return not DeltaTable(uri, storage_options=options).file_uris()


def append(spark, lake: str, name: str, df) -> dict[str, str]:
    """Append rows (for callers that have already excluded what the table holds)."""
    before = version(spark, lake, name)
    lease.check(lake)
    _writer(df, name).mode("append").save(table_path(lake, name))
    return _log_write(spark, lake, name, "append", before)


def add_files(lake: str, name: str, files: list[dict], s3=None) -> int:
    """Commit Parquet files that tasks wrote under table `name`'s folder (rows of the images_files
    intermediate: path, partition values, size, rows, stats) as one append; returns the rows added.

    The commit goes through delta-rs (the `deltalake` package), the Delta Lake project's other engine: Spark's
    Delta has no public API that adds files written outside a Spark write, and passing the image bytes through
    the JVM only to write them again costs most of an ingest's write stage. The files follow the table's
    schema and partitioning from schemas/; the table's protocol stays Spark's own (no feature is added).
    s3: the S3 settings, for a lake on S3.
    """
    import time

    if not files:
        log.info("write %s: add files (no commit: nothing to write)", name)
        return 0
    from deltalake import CommitProperties, DeltaTable
    from deltalake.transaction import AddAction

    tdef = schemas.table(name)
    uri, options = _delta_rs_location(table_path(lake, name), s3)
    table = DeltaTable(uri, storage_options=options)
    now = int(time.time() * 1000)
    # paths as they are on storage: delta-rs percent-encodes them into the log, as the protocol wants
    actions = [AddAction(f["path"], int(f["bytes"]), {c: f[c] for c in tdef.partition_by}, now, True, f["stats"])
               for f in files]
    lease.check(lake)
    table.create_write_transaction(actions, mode="append", schema=table.schema(), partition_by=list(tdef.partition_by),
                                   commit_properties=CommitProperties(custom_metadata={"s1mmalign": "add files"}))
    rows = sum(int(f["rows"]) for f in files)
    log.info("write %s: add %d files (numOutputRows=%d)", name, len(files), rows)
    return rows


def rows(lake: str, name: str, columns: Sequence[str], s3=None) -> list[dict]:
    """The current rows of table `name`, only `columns`, read without Spark: for the small metadata tables
    a run reads before its first Spark job (ingest_log), which then needs no JVM.

    delta-rs gives the snapshot's files; pyarrow reads them through its own file systems (our tables have
    no deletion vectors or column mapping, so a file's rows are the table's). Not delta-rs's pyarrow
    dataset: its Python file system handler made a short-lived process (jobs/plan.py) abort at exit
    ("terminate called without an active exception") now and then."""
    from urllib.parse import unquote, urlparse

    import pyarrow.parquet as pq
    from deltalake import DeltaTable

    from s1mmalign.storage import arrow_s3

    uri, options = _delta_rs_location(table_path(lake, name), s3)
    out: list[dict] = []
    for file in DeltaTable(uri, storage_options=options).file_uris():
        parsed = urlparse(file)
        if parsed.scheme == "s3":
            handle = arrow_s3(*_s3_access(s3)).open_input_file(f"{parsed.netloc}/{unquote(parsed.path.lstrip('/'))}")
        else:
            handle = unquote(parsed.path) if parsed.scheme == "file" else file
        out += pq.ParquetFile(handle).read(columns=list(columns)).to_pylist()
    return out


def _delta_rs_location(path: str, s3) -> tuple[str, dict[str, str]]:
    """The URI and storage options under which delta-rs reaches a table Spark reaches at `path`: s3a:// is
    s3:// there; endpoint, region and path style as S3A has them (credentials from the same AWS chain). One
    writer per lake holds its lease, so delta-rs may commit by copy-if-absent without a lock service."""
    if not path.startswith(("s3a://", "s3://")):
        return path, {}
    uri = "s3://" + path.split("://", 1)[1]
    endpoint, region, path_style = _s3_access(s3)
    options = {"AWS_S3_ALLOW_UNSAFE_RENAME": "true", "AWS_REGION": region}
    if endpoint:
        options["AWS_ENDPOINT_URL"] = endpoint
        if endpoint.startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
    if path_style:
        options["AWS_VIRTUAL_HOSTED_STYLE_REQUEST"] = "false"
    return uri, options


def _s3_access(s3) -> tuple[str | None, str, bool]:
    """(endpoint, region, path style) of the S3 settings (none given: AWS_ENDPOINT_URL, S3Conf's region),
    as delta-rs and pyarrow reach a lake on S3."""
    from s1mmalign.config import S3Conf

    s3 = s3 or S3Conf()
    return s3.endpoint_url or os.environ.get("AWS_ENDPOINT_URL"), s3.region or S3Conf.region, s3.path_style_access


def replace_slice(spark, lake: str, name: str, df, where: str, s3=None) -> dict[str, str]:
    """Atomically replace the rows matching `where` with df (one commit); into a table with no file yet,
    an append (s3: as merge_on_key's)."""
    if _holds_no_file(lake, name, s3):
        return append(spark, lake, name, df)
    before = version(spark, lake, name)
    lease.check(lake)
    _writer(df, name).mode("overwrite").option("replaceWhere", where).save(table_path(lake, name))
    return _log_write(spark, lake, name, f"replace where {where[:80]}", before)


def read(spark, lake: str, name: str, version: int | None = None):
    """The current rows of table `name` (or those of an older `version`: Delta's time travel)."""
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return reader.load(table_path(lake, name))


def exists(spark, lake: str, name: str, s3=None) -> bool:
    """Whether table `name` exists under the lake (has a commit). Without spark: a local lake from its
    files, an object-store lake by listing its log (s3: the S3 settings)."""
    from delta.tables import DeltaTable

    path = table_path(lake, name)
    if "://" not in lake:
        return os.path.isfile(os.path.join(path, "_delta_log", f"{0:020d}.json"))
    if spark is None:
        from s1mmalign.storage import Store

        store = Store.from_uri(lake, getattr(s3, "endpoint_url", None), getattr(s3, "region", None))
        return any(f.rel.endswith(".json") for f in store.list_dir(f"{name}/_delta_log")[1])
    return DeltaTable.isDeltaTable(spark, path)


def replace_all(spark, lake: str, name: str, df) -> dict[str, str]:
    """Atomically replace every row of table `name` with df (one commit)."""
    before = version(spark, lake, name) if exists(spark, lake, name) else -1
    lease.check(lake)
    _writer(df, name).mode("overwrite").save(table_path(lake, name))
    return _log_write(spark, lake, name, "replace all", before)
