"""Finds the project's data files (conf/, schemas/) in a checkout or inside the --py-files zip."""

from __future__ import annotations

import pkgutil
from pathlib import Path

_REPO = Path(__file__).resolve().parents[2]


def read_text(kind: str, name: str) -> str:
    """Text of `<kind>/<name>` (kind: conf or schemas): from the checkout, else bundled in the zip."""
    path = _REPO / kind / name
    if path.is_file():
        return path.read_text(encoding="utf-8")
    data = pkgutil.get_data("s1mmalign", f"_data/{kind}/{name}")
    if data is None:
        raise FileNotFoundError(f"{kind}/{name} is neither in the checkout nor in the package")
    return data.decode("utf-8")


def repo_root() -> Path:
    """The checkout this package was imported from (meaningless inside a zip)."""
    return _REPO
