"""Layered configuration: conf/base.yaml < conf/<env>.yaml < environment < flags, one frozen object."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import yaml

from s1mmalign import resources


class ConfigError(ValueError):
    """A configuration file or value that cannot be used."""


@dataclass(frozen=True)
class SparkConf:
    app_name: str = "s1mmalign-lake"
    master: str | None = None
    shuffle_partitions: int = 8
    delta_snapshot_partitions: int | None = None
    arrow_batch_rows: int = 256
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CatalogConf:
    database: str = "s1mmalign"
    metastore_dir: str = "_catalog"


@dataclass(frozen=True)
class IngestConf:
    jsonl_chunk_bytes: int = 64 << 20
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
    endpoint_url: str | None = None
    region: str = "us-east-1"


@dataclass(frozen=True)
class QualityConf:
    suites_dir: str = "expectations"          # the suite JSON files (in the checkout or the package)
    context_dir: str = "_quality/gx"          # Great Expectations' project, under the lake
    docs_dir: str = "_quality/data_docs"      # Data Docs, under the lake (unless --out)
    near_duplicate_distance: int = 2
    lsh_bands: int = 3
    max_bucket: int = 5000
    max_cluster_rounds: int = 40
    driver_cluster_edges: int = 1_000_000
    partial_unexpected: int = 20
    layouts: Mapping[str, str] = field(default_factory=dict)
    thresholds: Mapping[str, float] = field(default_factory=dict)
    taxonomy_file: str = "arxiv_taxonomy.yaml"


@dataclass(frozen=True)
class ClipConf:
    model: str = "ViT-B-32"
    checkpoint: str | None = None
    text_strategy: str = "truncate"       # truncate | chunk_mean
    batch_size: int = 256
    decode_threads: int = 4
    text_workers: int = -1                # tokenizer processes: -1 auto (on CUDA half the cores, max 8), 0 none
    device: str = "auto"                  # auto | cpu | cuda
    image_decode: str = "auto"            # auto (torch on CUDA, else pil) | pil | torch
    torch_threads: int = 0                # 0: torch's default
    cache_dir: str = "~/.cache/s1mmalign/checkpoints"
    spark_extra: Mapping[str, str] = field(default_factory=dict)   # e.g. GPU scheduling, for score_clip only


@dataclass(frozen=True)
class ReportConf:
    sql_dir: str = "sql"                  # the view definitions (in the checkout or the package)
    short_chars: int = 20                 # a text under this many characters counts as short
    figure_label_regex: str = r"(?i)^\s*(figure|figs?\.?)\s*s?[0-9]+"   # Java, RE2 and Python alike
    review_pairs: int = 5                 # lowest-aligned pairs listed per model and discipline
    preview_chars: int = 300              # caption text shown with them
    score_bin_width: float = 0.01         # CLIP score histogram bins
    length_bins_per_decade: int = 10      # word-count histogram bins (log scale)


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
    if "formats" in values:
        values["formats"] = tuple(str(v).upper() for v in values["formats"])
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
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"section {name}: {exc}") from None


def _read_yaml(path: Path | None, kind: str, name: str) -> dict:
    try:
        text = path.read_text(encoding="utf-8") if path else resources.read_text(kind, name)
        data = yaml.safe_load(text) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path or f'{kind}/{name}'}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path or name} is not valid YAML: {exc}") from None
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
    unknown = set(merged) - {"spark", "catalog", "ingest", "s3", "quality", "clip", "report"}
    if unknown:
        raise ConfigError(f"unknown config section(s): {', '.join(sorted(unknown))}")
    return Config(
        spark=_section(SparkConf, merged.get("spark"), "spark"),
        catalog=_section(CatalogConf, merged.get("catalog"), "catalog"),
        ingest=_section(IngestConf, merged.get("ingest"), "ingest"),
        s3=_section(S3Conf, merged.get("s3"), "s3"),
        disciplines=disciplines,
        quality=_section(QualityConf, merged.get("quality"), "quality"),
        clip=_section(ClipConf, merged.get("clip"), "clip"),
        report=_section(ReportConf, merged.get("report"), "report"),
    )
