import dataclasses

import pytest

from s1mmalign import config
from s1mmalign.config import ConfigError
from s1mmalign.lake import session
from s1mmalign.lake.root import Lake
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
    settings = session.session_settings(Lake("/tmp/lake"), config.load(overrides={"spark": spark_conf}, environ={}))
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
            if type(None) in typing.get_args(tp):      # Optional[int]: the int (tuple[int, ...]: ranged per item)
                tp = next(a for a in typing.get_args(tp) if a is not type(None))
            if tp in (int, float) and f"{name}.{f.name}" not in config.LIMITS:
                unbounded.append(f"{name}.{f.name}")
    assert unbounded == []
    with pytest.raises(ConfigError, match="setting clip.device must be one of auto, cpu, cuda, got 'tpu'"):
        config.load(environ={}, overrides={"clip": {"device": "tpu"}})


@pytest.mark.parametrize("key, value, why", [
    ("ingest.staging_dir", "", "empty"),
    ("ingest.staging_dir", "  ", "empty"),
    ("ingest.staging_dir", "..", "plain folder name"),
    ("ingest.staging_dir", "_staging/../..", "plain folder name"),
    ("ingest.staging_dir", ".", "plain folder name"),
    ("ingest.staging_dir", "a//b", "plain folder name"),
    ("ingest.staging_dir", " _staging", "plain folder name"),
    ("ingest.staging_dir", "_staging/x ", "plain folder name"),
    ("ingest.staging_dir", "/tmp/x", "relative"),
    ("ingest.staging_dir", "s3://bucket/x", "relative"),
    ("ingest.staging_dir", "a\\..\\..", "relative"),
    ("ingest.staging_dir", "C:x", "relative"),
    ("ingest.staging_dir", "pairs", "a table"),
    ("ingest.staging_dir", "images/x", "a table"),
    ("ingest.staging_dir", "_delta_log", "lake metadata"),
    ("catalog.metastore_dir", "..", "plain folder name"),
    ("catalog.metastore_dir", "quarantine", "a table"),
    ("quality.context_dir", "", "empty"),
    ("quality.context_dir", "ingest_log/gx", "a table"),
    ("quality.docs_dir", "../docs", "plain folder name"),
    ("quality.docs_dir", "_lease.json", "lake metadata"),
])
def test_a_lake_folder_setting_outside_its_own_folder_is_refused(key, value, why):
    section, name = key.split(".")
    with pytest.raises(ConfigError, match=f"setting {key} must be a folder under the lake, got .*{why}"):
        config.load(environ={}, overrides={section: {name: value}})


@pytest.mark.parametrize("overrides, message", [
    ({"ingest": {"staging_dir": "_quality"}},
     "quality.context_dir .* must not be inside or equal to ingest.staging_dir"),
    ({"catalog": {"metastore_dir": "_quality/gx"}}, "must not be inside or equal to"),
    ({"quality": {"docs_dir": "_staging/docs"}},
     "quality.docs_dir .* must not be inside or equal to ingest.staging_dir"),
])
def test_lake_folders_do_not_hold_one_another(overrides, message):
    with pytest.raises(ConfigError, match=message):
        config.load(environ={}, overrides=overrides)


def test_lake_folders_may_be_nested_names_of_their_own():
    cfg = config.load(environ={}, overrides={"ingest": {"staging_dir": "_work/staging"},
                                             "quality": {"docs_dir": "_work/docs"}})
    assert cfg.ingest.staging_dir == "_work/staging" and cfg.quality.docs_dir == "_work/docs"
    # a sibling whose name starts with another's is not inside it
    config.load(environ={}, overrides={"ingest": {"staging_dir": "_quality-staging"}})


def test_every_number_has_an_upper_bound_and_both_ends_hold():
    """Each numeric setting is refused just past either end of its range and taken at both ends."""
    for key, (low, high) in config.LIMITS.items():
        assert low is not None and high is not None, key
        section, name = key.split(".")
        integral = isinstance(low, int) and isinstance(high, int)
        step = 1 if integral else (high - low) * 1e-3
        for value in (low - step, high + step):
            with pytest.raises(ConfigError, match=f"setting {key} must be between"):
                config.load(environ={}, overrides={section: {name: value}, **_consistent(key, value)})
        for value in (low, high):
            try:
                config.load(environ={}, overrides={section: {name: value}, **_consistent(key, value)})
            except ConfigError as exc:
                pytest.fail(f"{key}={value}: {exc}")


def _consistent(key: str, value) -> dict:
    """Other settings a value at its range's end needs (a lease's heartbeat stays below its ttl)."""
    if key == "lease.ttl_seconds":
        return {"lease": {"ttl_seconds": value, "heartbeat_seconds": 1}}
    if key == "lease.heartbeat_seconds":
        return {"lease": {"heartbeat_seconds": value, "ttl_seconds": 7 * 86_400}}
    return {}


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 10**20])
def test_no_huge_or_not_a_number_setting_passes(value):
    with pytest.raises(ConfigError, match="must be between|must be an int"):
        config.load(environ={}, overrides={"report": {"score_bin_width": value}} if isinstance(value, float)
                    else {"spark": {"shuffle_partitions": value}})


def test_a_binary_conf_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe garbage")
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        config.load(str(bad), environ={})
    with pytest.raises(ConfigError, match="is a folder"):
        config.load(str(tmp_path), environ={})


@pytest.mark.parametrize("value, said", [
    ([0], "between 1 and 2147483647"), ([300, 2**31], "between 1 and 2147483647"), ([-5], "between 1"),
    ([True], "must be a tuple"), (["300"], "must be a tuple"), (300, "must be a list"),
])
def test_cut_lengths_are_a_list_of_positive_lengths(value, said):
    with pytest.raises(ConfigError, match=said):
        config.load(environ={}, overrides={"text": {"cut_lengths": value}})
    assert config.load(environ={}, overrides={"text": {"cut_lengths": [1, 300, 2**31 - 1]}}).text.cut_lengths == (
        1, 300, 2**31 - 1)
