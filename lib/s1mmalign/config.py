"""Layered configuration: conf/base.yaml < conf/<env>.yaml < environment < flags, one frozen object."""

from __future__ import annotations

import itertools
import os
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from s1mmalign import resources
from s1mmalign.errors import JobError


class ConfigError(JobError, ValueError):
    """A configuration file or value that cannot be used."""


@dataclass(frozen=True)
class SparkConf:
    app_name: str = "s1mmalign-lake"
    master: str | None = None
    shuffle_partitions: int = 8
    delta_snapshot_partitions: int | None = None
    arrow_batch_rows: int = 256
    progress_seconds: float = 30.0
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CatalogConf:
    database: str = "s1mmalign"
    metastore_dir: str = "_catalog"


@dataclass(frozen=True)
class IngestConf:
    jsonl_chunk_bytes: int = 64 << 20
    max_line_bytes: int = 8 << 20
    image_tasks: int = 0
    archive_slice_bytes: int = 64 << 20
    thumbnail_px: int = 256
    thumbnail_quality: int = 85
    max_image_bytes: int = 32 << 20
    max_image_pixels: int = 89_478_485
    raw_cap_chars: int = 4096
    formats: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "GIF")
    archive_suffix: str = ".tar.gz"
    staging_dir: str = "_staging"
    arxiv_sources: tuple[str, ...] = ("arxiv",)


@dataclass(frozen=True)
class S3Conf:
    endpoint_url: str | None = None       # also AWS_ENDPOINT_URL; http:// turns TLS off for S3A
    region: str = "us-east-1"
    path_style_access: bool = False       # bucket in the path, not the host name (MinIO, moto, Ceph)
    max_attempts: int = 10                # per request, with back-off: throttling (503 SlowDown), 5xx, resets
    connection_timeout_ms: int = 20000


@dataclass(frozen=True)
class MaintainConf:
    vacuum_retention_hours: int = 168     # never below Delta's safety check (its default 7 days)
    # table -> columns, within each discipline partition: a query by arXiv id skips most files
    zorder: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: {"pairs": ("arxiv_id",), "clip_scores": ("arxiv_id",)})


@dataclass(frozen=True)
class LeaseConf:
    ttl_seconds: int = 120                # a lease not renewed for this long may be taken over
    heartbeat_seconds: int = 20           # how often the holder renews it


@dataclass(frozen=True)
class QualityConf:
    suites_dir: str = "expectations"          # the suite JSON files (in the checkout or the package)
    context_dir: str = "_quality/gx"          # Great Expectations' project, under the lake
    docs_dir: str = "_quality/data_docs"      # Data Docs, under the lake (unless --out)
    data_docs: str = "offline"                # offline (assets served from the docs folder) | cdn | off
    docs_assets: str = "vendor/data_docs"     # where ./build.sh put Data Docs' assets (under the checkout)
    analytics: bool = False                   # Great Expectations' usage statistics
    near_duplicate_distance: int = 2
    lsh_bands: int = 3
    max_bucket: int = 5000
    max_cluster_rounds: int = 40
    driver_cluster_edges: int = 1_000_000
    partial_unexpected: int = 20
    pandas_max_rows: int = 500_000            # frames up to this many rows checked on the driver (pandas), 0: never
    # image_path's layout per source (regex; "default" for the others)
    layouts: Mapping[str, str] = field(default_factory=lambda: {
        "arxiv": r"^images/[0-9]{4}/[^/]+\.tar\.gz/[^/]+$", "default": r"^images/[^/]+/[^/]+$"})
    # the suites' $PARAMETERs
    thresholds: Mapping[str, float] = field(default_factory=lambda: {
        "unknown_share_max": 0.05, "exact_duplicate_share_max": 0.02, "near_duplicate_share_max": 0.05,
        "recaption_present_min": 0.99, "quarantined_share_max": 0.1, "caption_chars_max": 20000,
        "recaption_chars_max": 20000, "unknown_category_share_max": 0.01, "truncated_caption_share_max": 0.9,
        "truncated_recaption_share_max": 0.05, "non_english_share_max": 0.02, "boilerplate_share_max": 0.05})
    taxonomy_file: str = "arxiv_taxonomy.yaml"


@dataclass(frozen=True)
class ClipConf:
    model: str = "ViT-B-32"
    checkpoint: str | None = None
    text_strategy: str = "truncate"       # truncate | chunk_mean
    batch_size: int = 256
    decode_threads: int = 0               # image threads: 0 auto (on CUDA the cores left, else up to 4)
    text_workers: int = -1                # tokenizer processes: -1 auto (on CUDA a quarter of the cores, 1-8), 0 none
    device: str = "auto"                  # auto | cpu | cuda
    image_decode: str = "auto"            # auto (cpu on CUDA, else pil) | pil | cpu | torch
    torch_threads: int = 0                # 0: torch's default
    cache_dir: str = "~/.cache/s1mmalign/checkpoints"
    model_config: str | None = None       # an open_clip JSON model config, for a model that is not built in
    # e.g. GPU scheduling, for score_clip only (not part of a scorer's identity: left out of its hash)
    spark_extra: Mapping[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class TextConf:
    # jobs/score_text.py: text signals of every pair (score/text.py says how each is measured)
    max_chars: int = 1_000_000            # signals read a text's first this many characters (length and end: all)
    cut_lengths: tuple[int, ...] = (256, 300, 500, 512, 1000, 1024, 2048)   # a text this long with no end: cut
    open_sentence_words: int = 8          # a last sentence of this many words with no end: truncated
    lang_min_words: int = 4               # fewer words of letters: no language detected
    boilerplate_papers: int = 3           # a caption text in this many papers or more is boilerplate


@dataclass(frozen=True)
class FluencyConf:
    # jobs/score_fluency.py: masked-LM pseudo-perplexity (score/fluency.py)
    model: str = "scibert_scivocab_uncased"   # the name the scores carry (with the checkpoint's digest)
    checkpoint: str | None = None         # a Hugging Face folder (config, vocab/tokenizer, safetensors): path or s3://
    per_stratum: int = 200                # pairs scored per discipline x figure_type (all: every pair)
    all: bool = False                     # score every pair, not the stratified sample
    window: int = 512                     # tokens per window (at most the model's); longer texts: overlapping windows
    batch_tokens: int = 16384             # padded tokens per forward pass (masked copies of several texts)
    batch_pairs: int = 64                 # pairs per scoring batch (and rows per Arrow batch into the task)
    max_tokens: int = 8192                # a longer text is not scored (status <field>_too_long)
    max_chars: int = 200_000              # a longer text is not even tokenized (status <field>_too_long)
    device: str = "auto"                  # auto | cpu | cuda
    torch_threads: int = 0                # 0: one per task on CPU
    cache_dir: str = "~/.cache/s1mmalign/checkpoints"
    spark_extra: Mapping[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class ReportConf:
    sql_dir: str = "sql"                  # the view definitions (in the checkout or the package)
    short_chars: int = 20                 # a text under this many characters counts as short
    figure_label_regex: str = r"(?i)^\s*(figure|figs?\.?)\s*s?[0-9]+"   # Java, RE2 and Python alike
    review_pairs: int = 5                 # lowest-aligned pairs listed per model and discipline
    preview_chars: int = 300              # caption text shown with them
    score_bin_width: float = 0.01         # CLIP score histogram bins
    length_bins_per_decade: int = 10      # word-count histogram bins (log scale)
    quality_runs: int = 20                # validate runs in the quality trend
    history_runs: int = 50                # job runs in the refresh history
    bootstrap_replicates: int = 200       # the caption card's 95% intervals: Poisson bootstrap replicates
    bootstrap_blocks: int = 4096          # CLIP rows are resampled in this many random blocks per group (sums)
    worst_examples: int = 5               # pairs listed per text signal


@dataclass(frozen=True)
class ExportConf:
    # The export's spec (export.Spec.of): each a flag of jobs/export.py, these its defaults
    where: str | None = None              # a Spark SQL condition over pairs (and the model's scores)
    dedup: str = "none"                   # none | exact | near
    model: str | None = None              # a clip_scores model (name or id): its scores in each sample
    min_score: float | None = None        # keep pairs whose model score is at least this
    score_field: str | None = None        # caption | recaption (default: that of text; caption for both)
    text: str = "recaption"               # recaption | caption | both
    format: str = "webdataset"            # webdataset | parquet
    shard_size: str = "512MB"             # bytes per shard (KB/MB/GB powers of 1000, KiB/MiB/GiB of 1024)
    image: str = "original"               # original | thumbnail
    order: str = "storage"                # storage | pair_id
    batch_rows: int = 64                  # rows per Arrow batch into a shard task (bounded in bytes too:)
    batch_bytes: int = 67108864           # bytes per Arrow batch into a shard task
    row_group_bytes: int = 67108864       # Parquet shards: a row group holds about this many bytes
    broadcast_pairs: int = 2000000        # up to this many pairs, their image keys are broadcast (no shuffle of
                                          # images by sha)


@dataclass(frozen=True)
class Config:
    spark: SparkConf
    catalog: CatalogConf
    ingest: IngestConf
    s3: S3Conf
    disciplines: Mapping[str, Any]
    quality: QualityConf = field(default_factory=QualityConf)
    clip: ClipConf = field(default_factory=ClipConf)
    report: ReportConf = field(default_factory=ReportConf)
    lease: LeaseConf = field(default_factory=LeaseConf)
    maintain: MaintainConf = field(default_factory=MaintainConf)
    export: ExportConf = field(default_factory=ExportConf)
    text: TextConf = field(default_factory=TextConf)
    fluency: FluencyConf = field(default_factory=FluencyConf)


def spec_values(cfg: Config, section: str, **flags) -> dict:
    """A model spec's values: conf section `section` (every field), the s3 settings (where an s3://
    checkpoint is read from), and the job's flags over them (those given: not None)."""
    conf = getattr(cfg, section)
    return {**{f.name: getattr(conf, f.name) for f in fields(conf)}, "s3": cfg.s3,
            **{k: v for k, v in flags.items() if v is not None}}


# Ranges of numeric settings, (lowest, highest): checked when conf loads, so that a bad value is one line
# and exit 2 before Spark starts, never a run that reads nothing (a chunk size of -5), fails hours in, or
# plans 10^20 tasks and prints nothing for minutes. Every number has both ends (tests/test_config.py):
# the highest is far above any real use, and below what a column, an Arrow buffer or a scheduler holds.
GIB = 1 << 30
LIMITS: dict[str, tuple[float, float]] = {
    "spark.shuffle_partitions": (1, 100_000), "spark.delta_snapshot_partitions": (1, 10_000),
    "spark.arrow_batch_rows": (1, 1_000_000), "spark.progress_seconds": (0, 86_400),
    "ingest.jsonl_chunk_bytes": (1, 16 * GIB), "ingest.max_line_bytes": (1, 2 * GIB - 1),
    "ingest.image_tasks": (0, 100_000), "ingest.archive_slice_bytes": (1, 2 * GIB - 1),
    "ingest.thumbnail_px": (8, 4096), "ingest.thumbnail_quality": (1, 100),
    "ingest.max_image_bytes": (1, 2 * GIB - 1), "ingest.max_image_pixels": (1, 10**12),
    "ingest.raw_cap_chars": (0, 64 << 20),
    "quality.near_duplicate_distance": (0, 64), "quality.lsh_bands": (1, 64), "quality.max_bucket": (2, 10**8),
    "quality.max_cluster_rounds": (1, 10_000), "quality.driver_cluster_edges": (0, 10**9),
    "quality.partial_unexpected": (0, 10_000),
    "quality.pandas_max_rows": (0, 100_000_000),
    "clip.batch_size": (1, 65_536), "clip.decode_threads": (0, 1024), "clip.text_workers": (-1, 256),
    "clip.torch_threads": (0, 1024),
    "s3.max_attempts": (1, 100), "s3.connection_timeout_ms": (100, 3_600_000),
    "lease.ttl_seconds": (2, 7 * 86_400), "lease.heartbeat_seconds": (1, 86_400),
    "maintain.vacuum_retention_hours": (168, 87_600),
    "export.min_score": (-1.0, 1.0), "export.batch_rows": (1, 1_000_000), "export.batch_bytes": (1024, 2**31 - 1),
    "export.row_group_bytes": (1, 2 * GIB - 1), "export.broadcast_pairs": (0, 10**9),
    "report.short_chars": (0, 1_000_000), "report.review_pairs": (0, 10_000),
    "report.preview_chars": (0, 1_000_000), "report.score_bin_width": (1e-6, 1),
    "report.length_bins_per_decade": (1, 1000), "report.quality_runs": (1, 100000),
    "report.history_runs": (1, 100000),
    "report.bootstrap_replicates": (1, 10_000), "report.bootstrap_blocks": (1, 1_000_000),
    "report.worst_examples": (0, 10_000),
    "text.max_chars": (1000, 2**31 - 1), "text.open_sentence_words": (1, 10_000), "text.lang_min_words": (1, 10_000),
    "text.boilerplate_papers": (2, 10**9),
    "fluency.per_stratum": (1, 10**9), "fluency.window": (8, 1_000_000), "fluency.batch_tokens": (64, 10**8),
    "fluency.batch_pairs": (1, 65_536), "fluency.max_tokens": (1, 10**7), "fluency.max_chars": (1, 2**31 - 1),
    "fluency.torch_threads": (0, 1024),
}
# Folders under the lake that jobs create (and, for staging, empty): each must be a plain relative path
# below the lake root that names no table, and none may hold another. An empty value or '..' would
# otherwise put the lake root, or its parent, where a job deletes (lake_folder_problem).
LAKE_FOLDERS = ("ingest.staging_dir", "catalog.metastore_dir", "quality.context_dir", "quality.docs_dir")
LAKE_FILES = ("_lease.json", "_delta_log")      # the lake root's own files, besides the tables
CHOICES: dict[str, tuple[str, ...]] = {
    "clip.text_strategy": ("truncate", "chunk_mean"), "clip.device": ("auto", "cpu", "cuda"),
    "clip.image_decode": ("auto", "pil", "cpu", "torch"), "fluency.device": ("auto", "cpu", "cuda"),
    "quality.data_docs": ("offline", "cdn", "off"),
    "export.dedup": ("none", "exact", "near"), "export.text": ("recaption", "caption", "both"),
    "export.format": ("webdataset", "parquet"), "export.image": ("original", "thumbnail"),
    "export.order": ("storage", "pair_id"), "export.score_field": ("caption", "recaption"),
}


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _check_value(key: str, value, tp) -> None:
    """ConfigError unless value has the field's type (and range, and choice)."""
    args = typing.get_args(tp)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return
        tp = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif tp is str:
        ok = isinstance(value, str)
    elif origin is tuple:
        ok = isinstance(value, tuple) and all(isinstance(v, args[0]) and not isinstance(v, bool) for v in value)
        if ok and args[0] is int and not all(0 < v < 2**31 for v in value):
            raise ConfigError(f"setting {key} must hold numbers between 1 and {2**31 - 1}, got {list(value)!r}")
    else:                       # mappings: their values were made strings or numbers when read
        ok = isinstance(value, Mapping)
    if not ok:
        raise ConfigError(f"setting {key} must be {'a' if tp is not int else 'an'} {_type_name(tp)}, "
                          f"got {value!r}")
    low, high = LIMITS.get(key, (None, None))
    if low is not None and not low <= value <= high:     # also NaN, which compares false to both
        raise ConfigError(f"setting {key} must be between {low} and {high}, got {value!r}")
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(f"setting {key} must be one of {', '.join(CHOICES[key])}, got {value!r}")


def lake_folder_problem(value: str, tables: Sequence[str]) -> str | None:
    """Why `value` cannot be a folder under the lake root, or None: it must be a relative path of plain
    names (no '.', '..', empty part, backslash or scheme), whose first name is no table nor the lake's own."""
    if not isinstance(value, str) or not value:
        return "it is empty (that is the lake root itself)"
    if value.startswith("/") or "://" in value or "\\" in value or (len(value) > 1 and value[1] == ":"):
        return "it must be a path relative to the lake root"
    parts = value.split("/")
    if any(p.strip() in ("", ".", "..") or p != p.strip() for p in parts):
        return "every part must be a plain folder name (no '.', '..', empty part or edge spaces)"
    if parts[0] in tables or parts[0] in LAKE_FILES:
        return f"{parts[0]} is the lake's own ({'a table' if parts[0] in tables else 'lake metadata'})"
    return None


def _check_lake_folders(values: Mapping[str, str]) -> None:
    """ConfigError unless every lake folder setting is a folder of its own under the lake (LAKE_FOLDERS)."""
    tables = resources.table_names()
    for key, value in values.items():
        problem = lake_folder_problem(value, tables)
        if problem:
            raise ConfigError(f"setting {key} must be a folder under the lake, got {value!r}: {problem}")
    for a, b in itertools.permutations(values, 2):
        if (values[a] + "/").startswith(values[b] + "/"):
            raise ConfigError(f"setting {a} ({values[a]!r}) must not be inside or equal to {b} ({values[b]!r}): "
                              f"each lake folder is one job's own")


def _merge(base: dict, over: Mapping) -> dict:
    out = dict(base)
    for key, value in (over or {}).items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def _section(cls, values: Mapping | None, name: str):
    values = dict(values or {})
    known = {f.name for f in fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"unknown setting(s) in section {name}: {', '.join(sorted(unknown))}")
    for key in ("formats", "arxiv_sources", "cut_lengths"):
        if key in values and not isinstance(values[key], (list, tuple)):
            raise ConfigError(f"setting {name}.{key} must be a list, got {values[key]!r}")
    for key in ("extra", "spark_extra", "layouts", "thresholds", "zorder"):
        if values.get(key) is not None and not isinstance(values[key], Mapping):
            raise ConfigError(f"setting {name}.{key} must be a mapping, got {values[key]!r}")
    if "zorder" in values:
        if not all(isinstance(v, (list, tuple)) for v in (values["zorder"] or {}).values()):
            raise ConfigError(f"setting {name}.zorder must map each table to a list of columns")
        values["zorder"] = {str(k): tuple(str(c) for c in v) for k, v in (values["zorder"] or {}).items()}
    if "formats" in values:
        values["formats"] = tuple(str(v).upper() for v in values["formats"])
    if "cut_lengths" in values:
        values["cut_lengths"] = tuple(values["cut_lengths"])
    if "arxiv_sources" in values:
        values["arxiv_sources"] = tuple(str(v) for v in values["arxiv_sources"])
    for key in ("extra", "spark_extra"):
        if key in values:
            values[key] = {str(k): str(v) for k, v in (values[key] or {}).items()}
    if "layouts" in values:
        values["layouts"] = {str(k): str(v) for k, v in (values["layouts"] or {}).items()}
    if "thresholds" in values:
        try:
            values["thresholds"] = {str(k): float(v) for k, v in (values["thresholds"] or {}).items()}
        except (TypeError, ValueError):
            raise ConfigError(f"section {name}: every threshold must be a number") from None
    try:
        made = cls(**values)
    except TypeError as exc:
        raise ConfigError(f"section {name}: {exc}") from None
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        _check_value(f"{name}.{f.name}", getattr(made, f.name), hints[f.name])
    return made


def _read_yaml(path: Path | None, kind: str, name: str) -> dict:
    try:
        text = path.read_text(encoding="utf-8") if path else resources.read_text(kind, name)
        data = yaml.safe_load(text) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path or f'{kind}/{name}'}") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a folder") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path or name} is not UTF-8 text (byte {exc.start}): "
                          f"not a YAML file?") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path or name} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path or name} must hold a mapping")
    return data


def load(conf_file: str | None = None, overrides: Mapping | None = None,
         environ: Mapping[str, str] | None = None) -> Config:
    """Merge base.yaml, an optional env file, the environment and flag overrides into a Config."""
    environ = os.environ if environ is None else environ
    merged = _read_yaml(None, "conf", "base.yaml")
    if conf_file:
        merged = _merge(merged, _read_yaml(Path(conf_file), "conf", conf_file))
    env_over: dict = {}
    if environ.get("AWS_ENDPOINT_URL"):
        env_over = {"s3": {"endpoint_url": environ["AWS_ENDPOINT_URL"]}}
    merged = _merge(merged, env_over)
    merged = _merge(merged, overrides or {})
    disc_name = merged.pop("disciplines_file", "disciplines.yaml")
    disc_path = Path(conf_file).parent / disc_name if conf_file else None
    disciplines = _read_yaml(disc_path if disc_path and disc_path.is_file() else None, "conf", disc_name)
    unknown = set(merged) - {f.name for f in fields(Config) if f.name != "disciplines"}
    if unknown:
        raise ConfigError(f"unknown config section(s): {', '.join(sorted(unknown))}")
    lease = _section(LeaseConf, merged.get("lease"), "lease")
    if lease.heartbeat_seconds >= lease.ttl_seconds:
        raise ConfigError(f"lease.heartbeat_seconds ({lease.heartbeat_seconds}) must be below lease.ttl_seconds "
                          f"({lease.ttl_seconds}): a lease must be renewed before it expires")
    made = Config(
        spark=_section(SparkConf, merged.get("spark"), "spark"),
        catalog=_section(CatalogConf, merged.get("catalog"), "catalog"),
        ingest=_section(IngestConf, merged.get("ingest"), "ingest"),
        s3=_section(S3Conf, merged.get("s3"), "s3"),
        disciplines=disciplines,
        quality=_section(QualityConf, merged.get("quality"), "quality"),
        clip=_section(ClipConf, merged.get("clip"), "clip"),
        report=_section(ReportConf, merged.get("report"), "report"),
        lease=lease,
        maintain=_section(MaintainConf, merged.get("maintain"), "maintain"),
        export=_section(ExportConf, merged.get("export"), "export"),
        text=_section(TextConf, merged.get("text"), "text"),
        fluency=_section(FluencyConf, merged.get("fluency"), "fluency"),
    )
    _check_lake_folders({key: getattr(getattr(made, key.split(".")[0]), key.split(".")[1]) for key in LAKE_FOLDERS})
    return made
