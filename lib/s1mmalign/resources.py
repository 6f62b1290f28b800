"""Finds the project's data files (conf/, schemas/, expectations/) in a checkout or inside the --py-files zip."""

from __future__ import annotations

import functools
import pkgutil
from pathlib import Path

_REPO = Path(__file__).resolve().parents[2]     # data files: the checkout's, else the zip's own (_data/)


def _checkout() -> Path:
    """The checkout: the folder above lib/; inside the --py-files zip, the one build.sh built it from (named in
    _data/checkout), so that a job submitted from that machine (Airflow's tasks) finds its jars and Data Docs'
    assets; on a machine without it, paths under it simply do not exist."""
    if not Path(__file__).resolve().parents[1].is_file():        # not in a zip
        return _REPO
    try:
        named = pkgutil.get_data("s1mmalign", "_data/checkout")
    except OSError:                          # a zip built before build.sh wrote it
        named = None
    return Path(named.decode("utf-8").strip()) if named else _REPO


_CHECKOUT = _checkout()


def read_text(kind: str, name: str) -> str:
    """Text of `<kind>/<name>` (kind: conf, schemas or expectations): from the checkout, else bundled in the zip."""
    path = _REPO / kind / name
    if path.is_file():
        return path.read_text(encoding="utf-8")
    data = pkgutil.get_data("s1mmalign", f"_data/{kind}/{name}")
    if data is None:
        raise FileNotFoundError(f"{kind}/{name} is neither in the checkout nor in the package")
    return data.decode("utf-8")


def list_names(kind: str, suffix: str = "") -> list[str]:
    """Sorted file names in `<kind>/` ending in suffix: from the checkout, else from the package."""
    folder = _REPO / kind
    if folder.is_dir():
        return sorted(p.name for p in folder.iterdir() if p.is_file() and p.name.endswith(suffix))
    from importlib import resources

    bundled = resources.files("s1mmalign").joinpath("_data", kind)
    return sorted(p.name for p in bundled.iterdir() if p.is_file() and p.name.endswith(suffix))


def repo_root() -> Path:
    """The checkout this package was imported from, or (inside the zip) built from."""
    return _CHECKOUT


@functools.lru_cache(maxsize=None)
def tables_yaml() -> dict:
    """schemas/tables.yaml, parsed once (lake/schemas.py builds the schemas from it)."""
    import yaml

    return yaml.safe_load(read_text("schemas", "tables.yaml"))


def table_names() -> list[str]:
    """The Delta tables a lake holds (the entries of tables.yaml with a key), not the intermediates: what
    config checks the lake folders against and lake/schemas.py lists."""
    return [n for n, s in tables_yaml().items() if isinstance(s, dict) and "key" in s]
