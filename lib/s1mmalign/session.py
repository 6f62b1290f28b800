"""The one place that builds a SparkSession: Delta extension and catalog, Hive metastore in the lake."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from s1mmalign.config import Config
from s1mmalign.resources import repo_root


def delta_jars() -> list[str]:
    """The Delta jars build.sh resolved into jars/ (empty when running from the --py-files zip)."""
    folder = Path(os.environ.get("S1MMALIGN_JARS", repo_root() / "jars"))
    return sorted(str(p) for p in folder.glob("*.jar")) if folder.is_dir() else []


def catalog_settings(lake: str, cfg: Config) -> dict[str, str]:
    """Hive metastore settings that put the catalog beside the tables, for jobs and spark-sql alike."""
    meta = Path(lake, cfg.catalog.metastore_dir).resolve()
    return {
        "spark.sql.catalogImplementation": "hive",
        "spark.sql.warehouse.dir": str(meta / "warehouse"),
        "spark.hadoop.javax.jdo.option.ConnectionURL":
            f"jdbc:derby:;databaseName={meta / 'metastore_db'};create=true",
        "spark.hadoop.datanucleus.schema.autoCreateAll": "true",
        "spark.hadoop.hive.metastore.schema.verification": "false",
    }


def session_settings(lake: str, cfg: Config) -> dict[str, str]:
    """Every Spark setting a job needs, as one mapping (config extras win)."""
    settings = {
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.sql.shuffle.partitions": str(cfg.spark.shuffle_partitions),
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(cfg.spark.arrow_batch_rows),
        "spark.sql.session.timeZone": "UTC",
        "spark.databricks.delta.merge.repartitionBeforeWrite.enabled": "true",
        "spark.databricks.delta.schema.autoMerge.enabled": "false",
        "spark.python.worker.reuse": "true",
        "spark.ui.showConsoleProgress": "false",
        "spark.log.level": os.environ.get("S1MMALIGN_SPARK_LOG", "ERROR"),
        "spark.scheduler.mode": "FAIR",   # the concurrent writes of one run share the cores
        # A task writing a table partitioned by discipline keeps one open file per discipline (10 values)
        # instead of first sorting its rows by discipline: sorting image rows buffers and spills their bytes.
        "spark.sql.maxConcurrentOutputFileWriters": "12",
        # Delta reads a table's log with this many tasks (its default, 50, is far too many for small logs).
        "spark.databricks.delta.snapshotPartitions": str(snapshot_partitions(cfg)),
        **catalog_settings(lake, cfg),
    }
    jars = delta_jars()
    if jars:
        settings["spark.jars"] = ",".join(jars)
    settings.update(cfg.spark.extra)
    return settings


def snapshot_partitions(cfg: Config) -> int:
    """spark.delta_snapshot_partitions, else shuffle_partitions kept within 2..50 (Delta's default)."""
    return cfg.spark.delta_snapshot_partitions or min(50, max(2, cfg.spark.shuffle_partitions))


class LakeBusy(Exception):
    """The lake is in use by another job, cannot be written at all, or has a damaged Delta log."""


_held_locks: dict[str, object] = {}


def lock_lake(lake: str) -> None:
    """Hold the lake for this process (released when it exits, however it exits, kill -9 included).

    Jobs write the lake's tables and its embedded catalog, which only one process may open at a time: a
    second job on the same lake stops here with one line naming the holder, before Spark starts. A lake
    that cannot be written stops here too. Object-store lakes are not locked here.
    """
    import fcntl
    import json
    import time

    if "://" in lake or lake in _held_locks:
        return
    path = os.path.join(lake, ".s1mmalign.lock")
    try:
        os.makedirs(lake, exist_ok=True)
        handle = open(path, "a+", encoding="utf-8")
    except OSError as exc:
        raise LakeBusy(f"lake {lake} cannot be written: {exc.strerror or exc}") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        raise LakeBusy(f"lake {lake} is in use by another job ({holder or 'unknown'}); "
                       f"run one job at a time on a lake") from None
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"job": os.path.basename(sys.argv[0]) if sys.argv else "?", "pid": os.getpid(),
                             "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}))
    handle.flush()
    _held_locks[lake] = handle


def build(lake: str, cfg: Config):
    """Get or create the session for a job over `lake` (held by this process: see lock_lake)."""
    from pyspark.sql import SparkSession

    from s1mmalign.delta_io import damaged_logs

    lock_lake(lake)
    damaged = damaged_logs(lake)
    if damaged:
        raise LakeBusy(f"lake {lake} has a damaged Delta log: {', '.join(damaged)} is not valid JSON; "
                       f"restore it from a copy (Delta cannot read the table past it)")

    # Python workers run the driver's interpreter, and so see the same packages (unless set otherwise).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(cfg.spark.app_name)
    if cfg.spark.master and not _submitted():
        builder = builder.master(cfg.spark.master)
    for key, value in session_settings(lake, cfg).items():
        builder = builder.config(key, value)
    spark = builder.enableHiveSupport().getOrCreate()
    # Derby (the embedded metastore) boots on first catalog use: keep its log beside the catalog.
    meta = Path(lake, cfg.catalog.metastore_dir).resolve()
    meta.mkdir(parents=True, exist_ok=True)
    spark.sparkContext._jvm.java.lang.System.setProperty("derby.stream.error.file", str(meta / "derby.log"))
    return spark


def stop(spark) -> None:
    """Stop the session; a JVM that already died (e.g. out of memory) leaves nothing to stop, and must not
    hide the error that the job is about to report."""
    try:
        spark.stop()
    except Exception:   # py4j errors: the gateway is gone
        logging.getLogger(__name__).debug("the Spark JVM was already gone at stop", exc_info=True)


def jvm_exit_code() -> int | None:
    """The exit code of the Spark JVM this Python process started, once it has exited (else None)."""
    from pyspark import SparkContext

    proc = getattr(SparkContext._gateway, "proc", None)
    return proc.poll() if proc is not None else None


def _submitted() -> bool:
    """True when spark-submit started this driver (it then owns the master setting)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ
