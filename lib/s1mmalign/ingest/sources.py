"""What a source root holds: sources, their JSONL files, archives (split parts grouped), unpacked trees.

The driver lists only folder tops (`<source>/`, `<source>/jsonl/`): never the image files themselves.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from itertools import pairwise

from s1mmalign.ingest.records import escape_name, storable
from s1mmalign.lake.storage import FileInfo, SourceError, Store

_PART = re.compile(r"^(?P<archive>.+)\.part(?P<suffix>[a-z]{2,})$")


@dataclass(frozen=True)
class Archive:
    """One gzip tar archive, whole or as byte parts that concatenate into one stream."""

    source: str
    name: str                         # source_file of the whole: "arxiv/images_2019.tar.gz"
    parts: tuple[FileInfo, ...]       # in stream order; one part when the archive is not split
    missing_after: str | None = None  # a part missing after this one: stream up to the gap only

    @property
    def fingerprint(self) -> str:
        return "|".join(p.fingerprint for p in self.parts) + (f"|gap:{self.missing_after}"
                                                               if self.missing_after else "")


@dataclass(frozen=True)
class Refused:
    """A file ingest would read but does not: its name (or its source folder's) is not UTF-8, which no
    column and no Spark path can hold. ingest_log keeps it as unreadable under the escaped name."""

    kind: str                         # jsonl | archive_part
    file: FileInfo                    # rel: the name percent-escaped (records.escape_name)
    archive: str | None = None        # for archive parts: the (escaped) archive they belong to

    DETAIL = "its file name is not UTF-8 (shown percent-escaped): not read; rename it in UTF-8 to ingest it"


@dataclass(frozen=True)
class Source:
    name: str                         # the folder name, which is also its path under the root
    jsonl: tuple[FileInfo, ...]
    archives: tuple[Archive, ...]
    has_tree: bool                    # an unpacked images/ folder is there
    refused: tuple[Refused, ...] = ()


@dataclass(frozen=True)
class SourcePlan:
    sources: tuple[Source, ...] = field(default_factory=tuple)

    def source(self, name: str) -> Source:
        return next(s for s in self.sources if s.name == name)


def _suffix_index(suffix: str) -> int:
    value = 0
    for char in suffix:
        value = value * 26 + (ord(char) - ord("a"))
    return value


def group_archives(source: str, files: list[FileInfo], archive_suffix: str) -> tuple[Archive, ...]:
    """Group `x.tar.gz` and `x.tar.gz.partaa`, `.partab`, ... into archives; note a missing part."""
    whole: dict[str, FileInfo] = {}
    split: dict[str, list[tuple[str, FileInfo]]] = {}
    for info in files:
        name = info.rel.rsplit("/", 1)[-1]
        m = _PART.match(name)
        if m and m["archive"].endswith(archive_suffix):
            split.setdefault(info.rel[: -len(name)] + m["archive"], []).append((m["suffix"], info))
        elif name.endswith(archive_suffix):
            whole[info.rel] = info
    archives = [Archive(source, rel, (info,)) for rel, info in whole.items()]
    for rel, parts in split.items():
        if rel in whole:
            continue  # both the whole archive and its parts: the whole one is read
        parts.sort(key=lambda p: (len(p[0]), p[0]))
        kept, missing_after = [parts[0][1]], None
        if _suffix_index(parts[0][0]) != 0:
            missing_after = "(start)"
            kept = []
        else:
            for (prev, _), (suffix, info) in pairwise(parts):
                if len(suffix) != len(prev) or _suffix_index(suffix) != _suffix_index(prev) + 1:
                    missing_after = prev
                    break
                kept.append(info)
        archives.append(Archive(source, rel, tuple(kept), missing_after))
    return tuple(sorted(archives, key=lambda a: a.name))


def discover(store: Store, archive_suffix: str = ".tar.gz") -> tuple[Store, SourcePlan]:
    """List the sources under a root: every folder with a jsonl/ folder.

    A root that is itself one source folder (it holds jsonl/) is read as its parent with that one
    source, so that source_file paths always start with the source name.
    """
    dirs, _ = store.list_dir("")
    names = dirs
    if "jsonl" in dirs:
        store, names = store.parent(), [store.basename()]
    sources = []
    for name in names:
        sub_dirs, top_files = store.list_dir(name)
        if "jsonl" not in sub_dirs:
            continue
        _, jsonl_files = store.list_dir(f"{name}/jsonl")
        jsonl = [f for f in jsonl_files if f.rel.endswith(".jsonl")]
        archives = group_archives(name, top_files, archive_suffix)
        sources.append(_refuse_unstorable(Source(name, tuple(jsonl), archives, "images" in sub_dirs)))
    if not sources:
        raise SourceError(f"no S1-MMAlign sources under {store.uri} (expected <source>/jsonl/*.jsonl)")
    return store, SourcePlan(tuple(sources))


def _refuse_unstorable(src: Source) -> Source:
    """The source without the files whose names are not UTF-8 (every file, when the source folder's name is
    not), which it lists as refused instead (POSIX names are bytes; an old mirror's may be Latin-1)."""
    def escaped(f: FileInfo) -> FileInfo:
        return dataclasses.replace(f, rel=escape_name(f.rel))

    jsonl, archives, refused = [], [], []
    for f in src.jsonl:
        if storable(f.rel):
            jsonl.append(f)
        else:
            refused.append(Refused("jsonl", escaped(f)))
    for a in src.archives:
        if storable(a.name) and all(storable(p.rel) for p in a.parts):
            archives.append(a)
        else:
            refused += [Refused("archive_part", escaped(p), escape_name(a.name)) for p in a.parts]
    if not refused and storable(src.name):
        return src
    return Source(escape_name(src.name), tuple(jsonl), tuple(archives), src.has_tree and storable(src.name),
                  tuple(refused))
