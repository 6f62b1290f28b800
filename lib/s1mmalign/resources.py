"""Finds the project's data files (conf/, schemas/, expectations/) in a checkout or inside the --py-files zip."""

from __future__ import annotations

import pkgutil
from pathlib import Path

_REPO = Path(__file__).resolve().parents[2]


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
    """The checkout this package was imported from (meaningless inside a zip)."""
    return _REPO
