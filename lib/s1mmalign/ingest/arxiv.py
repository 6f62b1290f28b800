"""arXiv identifiers: new style (1805.01234, 2401.00008v2) and old style (hep-th/0606282)."""

from __future__ import annotations

import re
from typing import NamedTuple

# re.ASCII: \d is [0-9] only (not full-width or Arabic-Indic digits, which int() would also accept).
_NEW = re.compile(r"(?P<yy>\d{2})(?P<mm>\d{2})\.(?P<num>\d{4,5})(?:v(?P<ver>\d{1,9}))?", re.ASCII)
_OLD = re.compile(r"(?P<arch>[a-z]+(?:-[a-z]+)*)(?P<subj>\.[A-Z]{2})?/(?P<yy>\d{2})(?P<mm>\d{2})(?P<num>\d{3})"
                  r"(?:v(?P<ver>\d{1,9}))?", re.ASCII)
_PREFIX = re.compile(r"^(?:arxiv:|https?://arxiv\.org/(?:abs|pdf)/)", re.IGNORECASE)


class ArxivId(NamedTuple):
    id: str                 # normalized, without version: "1805.01234", "hep-th/0606282"
    version: int | None     # the vN suffix, if any
    folder: str             # what image folders carry: "1805.01234" or "0606282"
    archive: str | None     # old style only: "hep-th", "math" (math.AP -> math)


def parse(raw: str) -> ArxivId | None:
    """Parse an arXiv id; None when it is not one. Accepts an `arXiv:` prefix or an abs/pdf URL."""
    text = _PREFIX.sub("", raw.strip())
    if text.endswith(".pdf"):
        text = text[:-4]
    m = _NEW.fullmatch(text)
    if m:
        yy, mm, num = int(m["yy"]), int(m["mm"]), m["num"]
        # 4-digit numbers ran 0704-1412, 5-digit ones from 1501 on.
        if not 1 <= mm <= 12 or (len(num) == 4) != (yy < 15) or (yy, mm) < (7, 4):
            return None
        ident = f"{m['yy']}{m['mm']}.{num}"
        return ArxivId(ident, _version(m["ver"]), ident, None)
    m = _OLD.fullmatch(text)
    if m:
        yy, mm = int(m["yy"]), int(m["mm"])
        if not 1 <= mm <= 12 or not (yy >= 91 or yy <= 7):
            return None
        number = f"{m['yy']}{m['mm']}{m['num']}"
        subj = m["subj"] or ""
        return ArxivId(f"{m['arch']}{subj}/{number}", _version(m["ver"]), number, m["arch"])
    return None


def _version(ver: str | None) -> int | None:
    return int(ver) if ver else None


def from_image_path(image_path: str) -> ArxivId | None:
    """The new-style id an arXiv image path names (images/YYMM/<id>.tar.gz/...), if it names one."""
    parts = image_path.split("/")
    if len(parts) >= 3 and parts[0] == "images" and parts[2].endswith(".tar.gz"):
        found = parse(parts[2][: -len(".tar.gz")])
        if found and found.archive is None:
            return found
    return None
