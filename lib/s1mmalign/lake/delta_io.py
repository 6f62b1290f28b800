"""Delta tables by path, below the Lake (root.py): a table's log read without Spark, its creation from
schemas/, its writer's options. Nothing here knows a lake root or its lease: every write goes through a
Lake, which checks the lease first."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from s1mmalign.lake import schemas

log = logging.getLogger(__name__)


def damaged_logs(root: Path) -> list[str]:
    """Commit files Delta would have to read (after each table's last checkpoint) under a local lake root that
    are not JSON lines (a truncated or overwritten commit), as one phrase each."""
    found: list[str] = []
    for name in schemas.lake_tables():
        log_dir = root / name / "_delta_log"
        since = -1
        try:
            since = int(json.loads((log_dir / "_last_checkpoint").read_text())["version"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        for number, commit in _commits(log_dir):
            if number <= since:
                continue
            try:
                lines = commit.read_text(encoding="utf-8").splitlines()
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


def last_local_commit(log_dir: Path) -> tuple[int, dict[str, str]]:
    """(version, operationMetrics) of the newest commit of a table on local disk, from its commit file (no
    Spark job); (-1, {}) when it has none."""
    commits = _commits(log_dir)
    if not commits:
        return -1, {}
    number, commit = commits[-1]
    with open(commit, encoding="utf-8") as lines:       # commitInfo is a commit's first action
        for line in lines:
            info = json.loads(line).get("commitInfo") if line.strip() else None
            if info is not None:
                return number, {k: str(v) for k, v in (info.get("operationMetrics") or {}).items()}
    return number, {}


def changes(spark, path: str, since: int, until: int, columns: list[str]):
    """The rows of the Delta table at `path` (only `columns`) inserted, deleted, or updated in one of `columns`
    (both the row before and after) by a commit after version `since` up to `until`, from its change data
    feed, checkpointed; None when the feed cannot tell (not recorded for those versions, or vacuumed away)."""
    try:
        feed = (spark.read.format("delta").option("readChangeFeed", "true")
                .option("startingVersion", since + 1).option("endingVersion", until).load(path)
                .select(*columns, "_change_type", "_commit_version"))
        keys = [*columns, "_commit_version"]
        post = feed.where("_change_type = 'update_postimage'").select(*keys)
        pre = feed.where("_change_type = 'update_preimage'").select(*keys)
        moved = post.join(pre, keys, "left_anti").unionByName(pre.join(post, keys, "left_anti"))
        return (feed.where("_change_type IN ('insert', 'delete')").select(*keys).unionByName(moved)
                .select(*columns).localCheckpoint())
    except Exception as exc:      # noqa: BLE001  (AnalysisException, or the JVM's error when files are gone)
        log.info("change data feed of %s from version %d: unavailable (%s)", path, since + 1,
                 str(exc).strip().splitlines()[0][:200])
        return None


def properties(spark, path: str) -> dict[str, str]:
    """A Delta table's properties at its latest version (SHOW TBLPROPERTIES: read from the log's
    metadata, no Spark job, unlike DESCRIBE DETAIL)."""
    return {r.key: r.value for r in spark.sql(f"SHOW TBLPROPERTIES delta.`{path}`").collect()}


def ensure_table(spark, path: str, tdef: schemas.TableDef, created: bool = False) -> None:
    """Create the table at `path` as schemas/ defines it unless it exists (`created`: known to, from its first
    commit: a crash mid-create leaves none); give a table made by an earlier version its new columns and
    properties."""
    from delta.tables import DeltaTable

    if not created:
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


def _add_missing_columns(spark, path: str, tdef) -> None:
    """A table made by an earlier version lacks a (nullable) column that schemas/ has since gained: add it
    (a metadata-only commit; its existing rows read it as null)."""
    have = {f.name for f in spark.read.format("delta").load(path).schema.fields}
    missing = [f for f in tdef.spark().fields if f.name not in have]
    if missing:
        columns = ", ".join(f"{f.name} {f.dataType.simpleString()}" for f in missing)
        log.info("table %s: adding column(s) %s", tdef.name, columns)
        spark.sql(f"ALTER TABLE delta.`{path}` ADD COLUMNS ({columns})")


def writer(df, name: str):
    """A Delta writer for table `name`'s columns with its write options from schemas/."""
    tdef = schemas.table(name)
    return df.select(*tdef.names).write.format("delta").options(**dict(tdef.write_options))


def write_staging(df, path: str, name: str) -> None:
    """Write df as a run's Parquet staging at `path`, with intermediate `name`'s write options from schemas/."""
    df.write.mode("overwrite").options(**dict(schemas.table(name).write_options)).parquet(path)
