"""One JSONL line to one record or one quarantine reason: pure, no Spark."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from s1mmalign.ingest import arxiv
from s1mmalign.ingest.disciplines import DisciplineMap

BOM = b"\xef\xbb\xbf"
KNOWN_TOP = frozenset({"image_path", "caption", "recaption", "metadata",
                       "arxiv_id", "title", "categories", "doi"})
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class LineContext:
    """What a parser needs to know about where a line came from."""

    source: str
    source_file: str
    is_arxiv_source: bool
    disciplines: DisciplineMap
    raw_cap_chars: int = 4096


class Reject(Exception):
    """A line that cannot become a pair: a reason code and a detail."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def pair_id(source: str, image_path: str) -> str:
    """Stable id of a pair: the same source and image_path give the same id on every run."""
    return hashlib.sha256(f"{source}\x00{image_path}".encode("utf-8")).hexdigest()[:32]


def path_problem(image_path: str) -> str | None:
    """Why an image_path is unsafe to resolve under a source root, or None when it is safe."""
    if "\x00" in image_path:
        return "NUL byte in path"
    if image_path.startswith(("/", "\\")) or _DRIVE.match(image_path):
        return "absolute path"
    if ".." in re.split(r"[/\\]", image_path):
        return "'..' component"
    return None


def normalize_path(image_path: str) -> str:
    """One spelling per file, the form archive members and records share: no './' or '.' components,
    no empty ones ('//', a trailing '/'). '..' and absolute paths are refused before (path_problem)."""
    if "//" not in image_path and "./" not in image_path and not image_path.endswith(("/", "/.")) \
            and image_path != ".":
        return image_path
    return "/".join(p for p in image_path.split("/") if p not in ("", "."))


def storable(text: str) -> bool:
    """Whether a column can hold the text: UTF-8 cannot encode an unpaired UTF-16 surrogate (which JSON
    allows as an escape, and tar names read with surrogateescape carry for bytes that are not UTF-8)."""
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def escape_name(name: str) -> str:
    """A file name that may carry bytes that are not UTF-8 (os.listdir's surrogate escapes) as text any column
    holds, losslessly: each such byte as %XX, a '%' as %25."""
    return "".join("%25" if c == "%" else f"%{ord(c) - 0xDC00:02X}" if 0xDC80 <= ord(c) <= 0xDCFF else c
                   for c in name)


def safe_text(value: str | None) -> str | None:
    """Text any column can hold: unpaired surrogates written as backslash escapes."""
    if value is None or storable(value):
        return value
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def too_long(line_no: int, prefix: bytes, length: int, limit: int, ctx: "LineContext") -> dict:
    """The quarantine row of a line over ingest.max_line_bytes (only its first bytes were kept)."""
    row = {"source": ctx.source, "source_file": ctx.source_file, "source_line": line_no,
           "raw": prefix[: 4 * ctx.raw_cap_chars].decode("utf-8", errors="replace")[: ctx.raw_cap_chars]}
    return _rejected(row, "line_too_long", f"{length} bytes > ingest.max_line_bytes {limit}")


def _optional_str(value: Any, name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise Reject("wrong_type", f"{name} is {type(value).__name__}, expected string")


def _categories(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):  # arXiv metadata writes them space separated
        return value.split() or None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [v.strip() for v in value if v.strip()] or None
    raise Reject("wrong_type", f"categories is {type(value).__name__}, expected list of strings")


def _first(meta: dict, top: dict, name: str) -> Any:
    value = meta.get(name)
    return top.get(name) if value is None else value


def parse_line(line: bytes, line_no: int, ctx: LineContext) -> dict | None:
    """Parse one line (no line end) into a parsed_lines row; None for a blank line."""
    if line_no == 1 and line.startswith(BOM):
        line = line[len(BOM):]
    if line.endswith(b"\r"):
        line = line[:-1]
    if not line.strip():
        return None
    row: dict[str, Any] = {"source": ctx.source, "source_file": ctx.source_file, "source_line": line_no}
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        row["raw"] = line.decode("utf-8", errors="replace")[: ctx.raw_cap_chars]
        return _rejected(row, "invalid_utf8", f"byte {exc.start}: {exc.reason}")
    row["raw"] = text[: ctx.raw_cap_chars]
    try:
        out = _record(row, text, ctx)
        if "\\u" in text:      # only \uXXXX escapes can put an unpaired surrogate into decoded text
            _check_storable(out)
        return out
    except Reject as rej:
        return _rejected(row, rej.reason, rej.detail)
    except Exception as exc:  # noqa: BLE001 - whatever else a line does, it is that line's outcome
        return _rejected(row, "invalid_value", f"{type(exc).__name__}: {exc}")


def unstorable(row: dict, exc: Exception) -> dict:
    """The reject that stands for a row no column could hold (found when the row met Arrow)."""
    return _rejected({k: safe_text(row[k]) if isinstance(row.get(k), str) else row.get(k)
                      for k in ("source", "source_file", "source_line", "raw", "image_path")},
                     "invalid_value", f"{type(exc).__name__}: {exc}")


def _check_storable(row: dict) -> None:
    for name, value in row.items():
        for text in (value if isinstance(value, list) else [value]):
            if isinstance(text, str) and not storable(text):
                raise Reject("invalid_value", f"{name} holds an unpaired UTF-16 surrogate (\\ud800-\\udfff escape)")


def _rejected(row: dict, reason: str, detail: str) -> dict:
    """A parsed_lines row for a rejected line: only the columns a quarantine row keeps, all storable."""
    out = {k: row[k] for k in ("source", "source_file", "source_line", "raw") if k in row}
    out["image_path"] = safe_text(row.get("image_path")) if isinstance(row.get("image_path"), str) else None
    out["reason"] = reason
    out["detail"] = safe_text(detail[:500])
    return out


def _not_json(name: str):
    """NaN, Infinity and -Infinity: Python's json reads (and its dumps writes) them, JSON has no such value,
    and metadata_json must stay JSON: the line is quarantined, never stored verbatim or changed."""
    raise Reject("invalid_value", f"{name} is not a JSON value (JSON has no NaN or Infinity)")


def _record(row: dict, text: str, ctx: LineContext) -> dict:
    try:
        obj = json.loads(text, parse_constant=_not_json)
    except json.JSONDecodeError as exc:
        raise Reject("malformed_json", str(exc)) from None
    except (ValueError, RecursionError) as exc:   # valid JSON Python cannot hold: a 5,000-digit integer,
        raise Reject("invalid_value", f"{type(exc).__name__}: {exc}") from None   # nesting 1,000 deep
    if not isinstance(obj, dict):
        raise Reject("not_an_object", f"JSON {type(obj).__name__}, expected an object")

    image_path = obj.get("image_path")
    if isinstance(image_path, str):
        row["image_path"] = image_path
    if image_path is None or image_path == "":
        raise Reject("missing_field", "no image_path")
    if not isinstance(image_path, str):
        raise Reject("wrong_type", f"image_path is {type(image_path).__name__}, expected string")
    problem = path_problem(image_path)
    if problem:
        raise Reject("unsafe_path", problem)
    image_path = normalize_path(image_path)
    row["image_path"] = image_path
    if not image_path:
        raise Reject("missing_field", "image_path names no file")

    meta = obj.get("metadata")
    if meta is None:
        meta = {}
    elif not isinstance(meta, dict):
        raise Reject("wrong_type", f"metadata is {type(meta).__name__}, expected object")

    caption = _optional_str(obj.get("caption"), "caption")
    recaption = _optional_str(obj.get("recaption"), "recaption")
    title = _optional_str(_first(meta, obj, "title"), "title")
    doi = _optional_str(_first(meta, obj, "doi"), "doi")
    raw_id = _optional_str(_first(meta, obj, "arxiv_id"), "arxiv_id")
    categories = _categories(_first(meta, obj, "categories"))
    if not (caption or "").strip() and not (recaption or "").strip():
        raise Reject("empty_caption", "caption and recaption both empty")

    ident = None
    if ctx.is_arxiv_source:
        if raw_id is not None and raw_id.strip():
            ident = arxiv.parse(raw_id)
            if ident is None:
                raise Reject("bad_arxiv_id", f"not an arXiv id: {raw_id[:80]!r}")
        else:
            ident = arxiv.from_image_path(image_path)
            if ident is None:
                raise Reject("missing_field", "no arxiv_id, and the image path names none")

    primary = categories[0] if categories else (ident.archive if ident else None)
    extra = dict(meta)
    for key, value in obj.items():
        if key not in KNOWN_TOP:
            extra.setdefault(key, value)
    folder = image_path.rsplit("/", 2)[-2] if "/" in image_path else image_path
    row.update(
        pair_id=pair_id(ctx.source, image_path),
        arxiv_id=ident.id if ident else None,
        arxiv_version=ident.version if ident else None,
        paper_id=(ident.id if ident else None) or doi or f"{ctx.source}:{folder}",
        caption=caption,
        recaption=recaption,
        title=title,
        categories=categories,
        primary_category=primary,
        doi=doi,
        metadata_json=json.dumps(extra, sort_keys=True, ensure_ascii=False) if extra else None,
        discipline=ctx.disciplines.derive(primary, ctx.source),
    )
    return row
