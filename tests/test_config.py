import dataclasses

import pytest

from s1mmalign import config, session
from s1mmalign.config import ConfigError
from s1mmalign.resources import repo_root


def test_layers_base_env_environment_flags(tmp_path):
    env_file = tmp_path / "x.yaml"
    env_file.write_text("spark:\n  shuffle_partitions: 3\ningest:\n  thumbnail_px: 128\n")
    cfg = config.load(str(env_file), overrides={"ingest": {"thumbnail_px": 64}},
                      environ={"AWS_ENDPOINT_URL": "http://127.0.0.1:9"})
    assert cfg.spark.shuffle_partitions == 3          # env file over base
    assert cfg.ingest.thumbnail_px == 64              # flags over env file
    assert cfg.ingest.max_image_bytes == 32 << 20     # base
    assert cfg.s3.endpoint_url == "http://127.0.0.1:9"  # environment


def test_frozen():
    cfg = config.load(environ={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.ingest.thumbnail_px = 1


@pytest.mark.parametrize("text, message", [
    ("ingest:\n  thumbnail_pix: 3\n", "thumbnail_pix"),
    ("nonsense: 1\n", "nonsense"),
    ("- a list\n", "mapping"),
    ("ingest: [\n", "not valid YAML"),
    ("s3:\n  path_style_access: 'yes'\n", "setting s3.path_style_access must be a bool, got 'yes'"),
    ("s3:\n  max_attempts: 0\n", "setting s3.max_attempts must be between 1 and 100"),
    ("export:\n  batch_bytes: 10\n", "setting export.batch_bytes must be between 1024 and 2147483647"),
    ("export:\n  batch_rows: two\n", "setting export.batch_rows must be an int"),
    ("lease:\n  ttl_seconds: 30\n  heartbeat_seconds: 30\n", "lease.heartbeat_seconds .30. must be below "
                                                               "lease.ttl_seconds .30."),
])
def test_bad_files_are_one_clear_error(tmp_path, text, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError, match=message):
        config.load(str(bad), environ={})


def test_missing_file():
    with pytest.raises(ConfigError, match="not found"):
        config.load("/nonexistent/conf.yaml", environ={})


@pytest.mark.parametrize("spark_conf, expected", [
    ({"shuffle_partitions": 4}, "4"),
    ({"shuffle_partitions": 1}, "2"),
    ({"shuffle_partitions": 200}, "50"),
    ({"shuffle_partitions": 200, "delta_snapshot_partitions": 16}, "16"),
])
def test_delta_log_read_tasks(spark_conf, expected):
    settings = session.session_settings("/tmp/lake", config.load(overrides={"spark": spark_conf}, environ={}))
    assert settings["spark.databricks.delta.snapshotPartitions"] == expected
    assert settings["spark.sql.sources.parallelPartitionDiscovery.parallelism"] == expected   # VACUUM's listing


def test_cluster_conf_reads_delta_logs_with_few_tasks():
    cfg = config.load(str(repo_root() / "conf" / "cluster.yaml"), environ={})
    assert cfg.spark.shuffle_partitions == 200 and session.snapshot_partitions(cfg) == 16


def _sections():
    import typing

    return {name: tp for name, tp in typing.get_type_hints(config.Config).items() if name != "disciplines"}


def test_base_yaml_says_what_the_types_default_to():
    """Each default has one home, the section's type in config.py; conf/base.yaml is its commented copy
    for readers, and must equal it key for key (a default changed in one place only fails here)."""
    import yaml

    base = yaml.safe_load((repo_root() / "conf" / "base.yaml").read_text())
    assert set(base) - {"disciplines_file"} == set(_sections()), "sections differ"

    def plain(v):
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    for name, cls in _sections().items():
        typed = {f.name: plain(getattr(cls(), f.name)) for f in dataclasses.fields(cls)}
        assert base[name] == typed, name
    loaded = config.load(environ={})
    for name, cls in _sections().items():
        assert getattr(loaded, name) == cls(), name


def test_every_number_in_conf_has_a_range_and_every_choice_its_values():
    import typing

    unbounded = []
    for name, cls in _sections().items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            tp = next((a for a in typing.get_args(tp) if a is not type(None)), tp)
            if tp in (int, float) and f"{name}.{f.name}" not in config.LIMITS:
                unbounded.append(f"{name}.{f.name}")
    assert unbounded == []
    with pytest.raises(ConfigError, match="setting clip.device must be one of auto, cpu, cuda, got 'tpu'"):
        config.load(environ={}, overrides={"clip": {"device": "tpu"}})
