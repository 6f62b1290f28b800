"""Export's last step, and what makes it resumable: the draft manifest (_manifest.draft.json) pins spec and
versions when the writing starts; each shard's record (_shards/<name>.json: samples, bytes, sha256) is
written with it; a re-run over the same --out keeps the shards whose record and bytes agree and writes
the rest; the manifest (_manifest.json: spec, versions, counts, every shard) and _SUCCESS come last."""

from __future__ import annotations

import hashlib
import json
import logging
import re

from s1mmalign.export.spec import ExportError, Spec
from s1mmalign.lake.storage import Store

log = logging.getLogger(__name__)

MANIFEST, DRAFT, SUCCESS, RECORDS = "_manifest.json", "_manifest.draft.json", "_SUCCESS", "_shards"
_SHARD = re.compile(r"^shard-\d{6}\.(tar|parquet)$")


def _load_json(store: Store, rel: str) -> dict | None:
    """A small JSON object the export wrote, or None when absent, torn or not an object (a shard record
    torn by a crash is rewritten with its shard; a torn draft reads as another export's)."""
    got = store.get(rel)
    try:
        data = json.loads(got[0]) if got else None
    except (ValueError, RecursionError):
        log.warning("export: %s is not JSON (torn by a crash?): ignored", rel)
        return None
    return data if isinstance(data, dict) else None


def check_out(store: Store, spec: Spec, lake: str) -> dict | None:
    """What --out holds: None (empty), or the draft to resume; ExportError when it holds anything else.
    Spool files of shards whose task died are removed."""
    dirs, files = store.list_dir("")
    ours = {MANIFEST, DRAFT, SUCCESS}
    strangers = [f.rel for f in files if f.rel not in ours and not _SHARD.match(f.rel) and ".tmp" not in f.rel]
    strangers += [d for d in dirs if d != RECORDS]
    if strangers:
        raise ExportError(f"--out {store.uri} holds files that are not an export's ({', '.join(sorted(strangers)[:3])}"
                          f"...): choose an empty folder")
    names = {f.rel for f in files}
    held = None
    for rel in (MANIFEST, DRAFT) if SUCCESS in names else (DRAFT,):
        if rel in names:
            held = _load_json(store, rel)
            if held is None or held.get("spec") != spec.as_dict() or held.get("lake") != lake:
                what = "a complete" if SUCCESS in names else "an unfinished"
                raise ExportError(f"--out {store.uri} holds {what} export of another spec or lake: "
                                  f"choose another folder (or remove it)")
            break
    for name in names:
        if ".tmp" in name:
            store.delete(name)
    return held


def kept_shards(store: Store, draft: dict) -> dict[str, dict]:
    """Shards of the draft's plan already written whole: record present, bytes and sha256 agree."""
    planned = {s["name"]: s["samples"] for s in draft["shards"]}
    _, files = store.list_dir("")
    present = {f.rel: f.size for f in files}
    kept = {}
    for rec_file in store.list_dir(RECORDS)[1]:
        rec = _load_json(store, f"{RECORDS}/{rec_file.rel.rsplit('/', 1)[-1]}")
        name = rec and rec.get("name")
        if not name or planned.get(name) != rec.get("samples") or present.get(name) != rec.get("bytes"):
            continue
        digest = hashlib.sha256()
        with store.open(name) as fh:
            for block in iter(lambda: fh.read(8 << 20), b""):
                digest.update(block)
        if digest.hexdigest() == rec.get("sha256"):
            kept[name] = rec
    return kept


def publish(store: Store, lake: str, spec: Spec, versions: dict[str, int], tally: dict, warnings: list[str],
            shards: list[dict]) -> dict:
    """Write the manifest of a complete export (every shard's record, in order), then _SUCCESS; remove the
    draft and the records. Returns the manifest."""
    from datetime import datetime, timezone

    from s1mmalign.export.spec import LICENSE

    done = {
        "complete": True, "lake": lake, "spec": spec.as_dict(), "versions": versions,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "license": LICENSE,
        "samples": sum(s["samples"] for s in shards), "bytes": sum(s["bytes"] for s in shards),
        "selection": tally["steps"], "by_discipline": tally["by_discipline"], "by_source": tally["by_source"],
        "warnings": warnings, "shards": [{k: s[k] for k in ("name", "samples", "bytes", "sha256")} for s in shards],
    }
    store.put(MANIFEST, json.dumps(done, indent=1, sort_keys=True).encode())
    store.put(SUCCESS, b"")
    store.delete(DRAFT)
    store.remove_tree(RECORDS)
    return done
