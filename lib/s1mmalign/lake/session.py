"""The one place that builds a SparkSession: Delta extension and catalog, S3A, the catalog, the lake's lease."""

from __future__ import annotations

import atexit
import logging
import os
import sys
from pathlib import Path

from s1mmalign import stages
from s1mmalign.config import Config
from s1mmalign.errors import JobError
from s1mmalign.lake.root import Lake
from s1mmalign.resources import repo_root


def delta_jars() -> list[str]:
    """The Delta jars build.sh resolved into jars/ (empty when running from the --py-files zip)."""
    folder = Path(os.environ.get("S1MMALIGN_JARS", repo_root() / "jars"))
    return sorted(str(p) for p in folder.glob("*.jar")) if folder.is_dir() else []


def catalog_settings(lake: Lake, cfg: Config) -> dict[str, str]:
    """Catalog settings for jobs and spark-sql alike. A local lake keeps a Hive metastore (embedded Derby)
    beside its tables, so a later spark-sql session sees them; an object-store lake cannot hold Derby's
    files, so each session registers the tables in Spark's in-memory catalog (delta_io.ensure_tables;
    sqlshell does it with an init script)."""
    if lake.remote:
        return {"spark.sql.catalogImplementation": "in-memory"}
    meta = Path(lake.path(cfg.catalog.metastore_dir))
    return {
        "spark.sql.catalogImplementation": "hive",
        "spark.sql.warehouse.dir": str(meta / "warehouse"),
        "spark.hadoop.javax.jdo.option.ConnectionURL":
            f"jdbc:derby:;databaseName={meta / 'metastore_db'};create=true",
        "spark.hadoop.datanucleus.schema.autoCreateAll": "true",
        "spark.hadoop.hive.metastore.schema.verification": "false",
    }


def s3a_settings(cfg: Config) -> dict[str, str]:
    """Spark's S3A file system (hadoop-aws, from build.sh's jars) for s3:// and s3a:// paths, set as boto3
    is (storage.S3Store): endpoint (conf or AWS_ENDPOINT_URL, read by config.load), region, path style, attempts
    with back-off, connection timeout. Credentials are never
    set here: S3A reads them from the AWS chain (environment, profile, instance or pod role)."""
    s3 = cfg.s3
    attempts = str(s3.max_attempts)
    settings = {
        "spark.hadoop.fs.s3.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",   # s3:// as s3a:// in spark-sql
        "spark.hadoop.fs.s3a.endpoint.region": s3.region,
        "spark.hadoop.fs.s3a.path.style.access": str(s3.path_style_access).lower(),
        "spark.hadoop.fs.s3a.attempts.maximum": attempts,          # the SDK's own retries of one request
        "spark.hadoop.fs.s3a.retry.limit": attempts,               # S3A's retries of transient failures
        "spark.hadoop.fs.s3a.retry.interval": "500ms",
        "spark.hadoop.fs.s3a.retry.throttle.limit": attempts,      # 503 SlowDown
        "spark.hadoop.fs.s3a.retry.throttle.interval": "200ms",
        "spark.hadoop.fs.s3a.connection.establish.timeout": f"{s3.connection_timeout_ms}ms",
        # Delta lists _delta_log often: no per-list directory-marker probes
        "spark.hadoop.fs.s3a.directory.marker.retention": "keep",
    }
    if s3.endpoint_url:
        settings["spark.hadoop.fs.s3a.endpoint"] = s3.endpoint_url
        settings["spark.hadoop.fs.s3a.connection.ssl.enabled"] = str(not s3.endpoint_url.startswith("http://")).lower()
    return settings


def session_settings(lake: Lake, cfg: Config) -> dict[str, str]:
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
        # VACUUM lists a table's folders with this many tasks (Spark's default, 10,000, made a VACUUM of an
        # empty table take 20 s on 2 cores; 3 s with 8): a table has one folder per discipline, not 10,000.
        "spark.sql.sources.parallelPartitionDiscovery.parallelism": str(snapshot_partitions(cfg)),
        **s3a_settings(cfg),
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


def apply_s3a(spark, cfg: Config) -> None:
    """Set s3a_settings(cfg) on a running session (one built before the endpoint was known, e.g. in a
    notebook); S3A file systems made from then on (one per bucket) use them."""
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    for key, value in s3a_settings(cfg).items():
        conf.set(key[len("spark.hadoop."):], value)


class LakeBusy(JobError):
    """The lake is written by another job, cannot be written at all, or has a damaged Delta log."""


def take_lease(lake: Lake, job: str | None = None) -> None:
    """Hold the lake's lease for this process (Lake.hold, lease.py): a second writer stops here with one
    line naming the holder, before Spark starts; so does a lake that cannot be written."""
    from s1mmalign.lake import lease

    try:
        lake.hold(job)
    except lease.LeaseHeld as exc:
        raise LakeBusy(str(exc)) from None
    except OSError as exc:
        raise LakeBusy(f"lake {lake} cannot be written: {exc.strerror or exc}") from None
    except Exception as exc:      # botocore: no bucket, no access, no endpoint
        raise LakeBusy(f"lake {lake} cannot be written: {type(exc).__name__}: {exc}") from None
    atexit.register(lease.release_all)


def check_logs(lake: Lake) -> None:
    """LakeBusy when a table's Delta log under a local lake is damaged (delta_io.damaged_logs)."""
    damaged = lake.damaged_logs()
    if damaged:
        raise LakeBusy(f"lake {lake} has a damaged Delta log: {', '.join(damaged)} is not valid JSON; "
                       f"restore it from a copy (Delta cannot read the table past it)")


def build(lake: Lake, cfg: Config, write: bool = True, job: str | None = None):
    """Get or create the session for a job over `lake`; a job that writes holds the lake's lease first
    (take_lease, as `job`)."""
    from pyspark.sql import SparkSession

    if write:
        take_lease(lake, job)
    check_logs(lake)

    # Python workers run the driver's interpreter, and so see the same packages (unless set otherwise).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(cfg.spark.app_name)
    if cfg.spark.master and not _submitted():
        builder = builder.master(cfg.spark.master)
    for key, value in session_settings(lake, cfg).items():
        builder = builder.config(key, value)
    if lake.remote:
        spark = builder.getOrCreate()
        stages.watch_signals()       # Spark's context took SIGINT for itself: one line again, the job's
        return spark
    spark = builder.enableHiveSupport().getOrCreate()
    stages.watch_signals()
    # Derby (the embedded metastore) boots on first catalog use: keep its log beside the catalog.
    meta = Path(lake.path(cfg.catalog.metastore_dir))
    meta.mkdir(parents=True, exist_ok=True)
    spark.sparkContext._jvm.java.lang.System.setProperty("derby.stream.error.file", str(meta / "derby.log"))
    return spark


def stop(spark) -> None:
    """Stop the session and give the lake's lease back; a JVM that already died (e.g. out of memory)
    leaves nothing to stop, and must not hide the error that the job is about to report."""
    from s1mmalign.lake import lease

    try:
        spark.stop()
    except Exception:   # py4j errors: the gateway is gone
        logging.getLogger(__name__).debug("the Spark JVM was already gone at stop", exc_info=True)
    finally:
        lease.release_all()


def jvm_exit_code() -> int | None:
    """The exit code of the Spark JVM this Python process started, once it has exited (else None)."""
    from pyspark import SparkContext

    proc = getattr(SparkContext._gateway, "proc", None)
    return proc.poll() if proc is not None else None


def _submitted() -> bool:
    """True when spark-submit started this driver (it then owns the master setting)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ
