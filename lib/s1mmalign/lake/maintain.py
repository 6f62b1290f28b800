"""Table maintenance: compact (OPTIMIZE, Z-ORDER where conf says), VACUUM, remove leftover staging.

Each table of the lake, in turn:
  OPTIMIZE      small files rewritten into larger ones, per partition; `maintain.zorder` tables (pairs and
                clip_scores by arxiv_id) clustered by those columns within each discipline partition, so
                that Delta's file statistics let a query by arXiv id skip most files
  VACUUM        files no version of the last `maintain.vacuum_retention_hours` needs are deleted; Delta's
                own safety check stays on (it refuses a retention below the table's
                delta.deletedFileRetentionDuration), so time travel within the retention keeps working
Then the ingest's staging folder is removed (what a crashed run left: the job holds the lake's lease,
so no ingest is running). One line per table: files and bytes before and after, and its Delta version.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from pyspark.sql import SparkSession

from s1mmalign.config import Config, ConfigError
from s1mmalign.lake import schemas
from s1mmalign.lake.root import Lake
from s1mmalign.stages import clear_staging

log = logging.getLogger(__name__)


@dataclass
class TableReport:
    table: str
    files_before: int
    bytes_before: int
    files_after: int
    bytes_after: int
    version: int
    zorder: tuple[str, ...]

    def line(self) -> str:
        how = f"Z-ORDER BY ({', '.join(self.zorder)})" if self.zorder else "compacted"
        return (f"{self.table}: {self.files_before} files, {self.bytes_before:,} bytes -> {self.files_after} files, "
                f"{self.bytes_after:,} bytes ({how}, vacuumed); version {self.version}")


def _files(spark, lake: Lake, name: str) -> tuple[int, int]:
    from delta.tables import DeltaTable

    d = DeltaTable.forPath(spark, lake.path(name)).detail().first()
    return int(d.numFiles or 0), int(d.sizeInBytes or 0)


def zorder_columns(cfg: Config) -> dict[str, tuple[str, ...]]:
    """maintain.zorder, checked against schemas/ (ConfigError: a table or column that is not there)."""
    for name, columns in cfg.maintain.zorder.items():
        if name not in schemas.lake_tables():
            raise ConfigError(f"setting maintain.zorder names no lake table: {name}")
        missing = [c for c in columns if c not in schemas.table(name).names]
        if missing:
            raise ConfigError(f"setting maintain.zorder: table {name} has no column(s) {', '.join(missing)}")
    return dict(cfg.maintain.zorder)


def run(spark: SparkSession, cfg: Config, lake: Lake) -> list[TableReport]:
    """Maintain every table the lake holds; returns a report per table."""
    from delta.tables import DeltaTable

    zorders = zorder_columns(cfg)
    reports = []
    for name in schemas.lake_tables():
        if not lake.exists(name, spark):
            continue
        t0 = time.monotonic()
        files_before, bytes_before = _files(spark, lake, name)
        table = DeltaTable.forPath(spark, lake.path(name))
        zorder = zorders.get(name, ())
        lake.check_lease()
        if zorder:
            table.optimize().executeZOrderBy(*zorder)
        else:
            table.optimize().executeCompaction()
        lake.check_lease()
        table.vacuum(float(cfg.maintain.vacuum_retention_hours))
        files_after, bytes_after = _files(spark, lake, name)
        report = TableReport(name, files_before, bytes_before, files_after, bytes_after,
                             lake.version(name, spark), zorder)
        log.info("%s (%.1fs)", report.line(), time.monotonic() - t0)
        reports.append(report)
    clear_staging(lake.store(), cfg.ingest.staging_dir)
    return reports
