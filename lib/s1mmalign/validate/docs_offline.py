"""Great Expectations' Data Docs with no network: their CDN assets fetched once, the pages pointed at them.

GE's page templates load jQuery, Bootstrap, bootstrap-table, Vega and Font Awesome from public CDNs and
its logo from an S3 URL carrying the data context's id: offline (as most cluster nodes are) a page shows
its headings and nothing else, and online every view tells those hosts who looked. Here:
- `fetch(dest)` (run by ./build.sh) downloads the npm packages listed in conf/data_docs_assets.yaml from
  the registry, checks each tarball against its pinned sha512 `integrity`, and keeps the files named;
- `localize(site, assets)` copies them into the site (static/vendor/<package>@<version>/...) and rewrites
  every page: each listed URL points at the local copy (relative to the page; subresource-integrity and
  crossorigin attributes dropped), any other absolute URL a tag or a style would load is disabled (logged), and a
  Content-Security-Policy meta lets the page load nothing but files of its own site.

`python -m s1mmalign.validate.docs_offline --fetch DIR` fetches; `--check` says whether DIR holds every file.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import io
import logging
import os
import posixpath
import re
import shutil
import sys
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from s1mmalign import resources

log = logging.getLogger(__name__)

ASSETS_FILE = "data_docs_assets.yaml"
VENDOR = "static/vendor"
# What a page may load: its own site's files, inline scripts and styles (GE's pages hold their tables'
# data and set-up inline; Vega compiles expressions with Function), fonts and pictures as data: URLs.
CSP = ("default-src 'none'; script-src 'self' 'unsafe-inline' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'")
_CSP_META = f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
# Tags whose attribute loads something when the page opens (an <a href> loads only when clicked).
_LOADING_TAG = re.compile(r"<(script|link|img|iframe|source|embed)\b[^>]*>", re.I)
_URL_ATTR = re.compile(r"""(?<=\s)(src|href)\s*=\s*("([^"]*)"|'([^']*)')""", re.I)
_DROP_ATTR = re.compile(r"""\s(integrity|crossorigin)(\s*=\s*("[^"]*"|'[^']*'|[^\s>]+))?""", re.I)
_ABSOLUTE = re.compile(r"^\s*(https?:)?//", re.I)
# A style's url(...) that names another host (GE's default styles take the dark-mode logo from S3).
_CSS_URL = re.compile(r"""url\(\s*(["']?)((?:https?:)?//[^"')\s]+)\1\s*\)""", re.I)


class AssetsError(RuntimeError):
    """The Data Docs assets cannot be fetched or are not installed."""


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    integrity: str
    urls: dict[str, str]      # URL in GE's templates -> file in the package
    files: tuple[str, ...]    # further files its files refer to

    @property
    def folder(self) -> str:
        """Its folder under static/vendor/ (a scope's @ and / made plain)."""
        return f"{self.name.lstrip('@').replace('/', '+')}@{self.version}"

    def tarball(self, registry: str) -> str:
        return f"{registry.rstrip('/')}/{self.name}/-/{self.name.rsplit('/', 1)[-1]}-{self.version}.tgz"

    def paths(self) -> list[str]:
        return sorted(set(self.urls.values()) | set(self.files))


@dataclass(frozen=True)
class Assets:
    registry: str
    packages: tuple[Package, ...]
    static: dict[str, str]    # URL (prefix, with a trailing *) -> file under the site's static/

    def targets(self) -> list[tuple[str, str]]:
        """(URL or prefix*, the local file's path under the site) for every URL that is replaced."""
        out = [(url, f"{VENDOR}/{p.folder}/{path}") for p in self.packages for url, path in p.urls.items()]
        return out + [(url, f"static/{path}") for url, path in self.static.items()]


def load() -> Assets:
    data = yaml.safe_load(resources.read_text("conf", ASSETS_FILE))
    packages = tuple(Package(str(p["name"]), str(p["version"]), str(p["integrity"]),
                             {str(k): str(v) for k, v in (p.get("urls") or {}).items()},
                             tuple(str(f) for f in p.get("files") or ()))
                     for p in data["packages"])
    for p in packages:
        for path in p.paths():
            if path.startswith("/") or ".." in path.split("/"):
                raise AssetsError(f"{ASSETS_FILE}: {p.name}: file {path!r} must be a plain path in the package")
    return Assets(str(data["registry"]), packages, {str(k): str(v) for k, v in (data.get("static") or {}).items()})


def missing(dest: str | os.PathLike, assets: Assets | None = None) -> list[str]:
    """The files dest lacks (empty when every package's files are there)."""
    assets = assets or load()
    root = Path(dest)
    return [f"{p.folder}/{path}" for p in assets.packages for path in p.paths()
            if not (root / p.folder / path).is_file()]


def _check_integrity(data: bytes, integrity: str, what: str) -> None:
    algo, _, expected = integrity.partition("-")
    if algo not in ("sha512", "sha384", "sha256"):
        raise AssetsError(f"{what}: unsupported integrity {integrity!r}")
    got = base64.b64encode(hashlib.new(algo, data).digest()).decode()
    if got != expected:
        raise AssetsError(f"{what}: {algo} of the download is {got}, the pinned integrity says {expected}")


def fetch(dest: str | os.PathLike, registry: str | None = None, timeout: float = 60.0) -> list[str]:
    """Download and check every package; keep its named files under dest/<folder>/. The folders written."""
    assets = load()
    registry = registry or os.environ.get("NPM_CONFIG_REGISTRY") or assets.registry
    root = Path(dest)
    root.mkdir(parents=True, exist_ok=True)
    written = []
    for p in assets.packages:
        url = p.tarball(registry)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                data = resp.read()
        except OSError as exc:
            raise AssetsError(f"cannot download {url}: {exc}") from None
        _check_integrity(data, p.integrity, url)
        tmp = root / f".{p.folder}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for path in p.paths():
                try:
                    member = tar.getmember(f"package/{path}")
                except KeyError:
                    raise AssetsError(f"{url} has no file {path}") from None
                if not member.isfile():
                    raise AssetsError(f"{url}: {path} is not a regular file")
                target = tmp / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())
        shutil.rmtree(root / p.folder, ignore_errors=True)
        tmp.rename(root / p.folder)
        written.append(p.folder)
    return written


def _local(url: str, targets: list[tuple[str, str]]) -> str | None:
    bare = html.unescape(url).strip()
    for pattern, path in targets:
        if bare == pattern or (pattern.endswith("*") and bare.startswith(pattern[:-1])):
            return path
    return None


def rewrite_page(text: str, page_dir: str, targets: list[tuple[str, str]]) -> tuple[str, list[str]]:
    """The page with every listed URL made local (relative to page_dir, a posix path under the site) and
    every other absolute URL in a loading tag disabled; (new text, the URLs disabled)."""
    dropped: list[str] = []

    def tag(m: re.Match) -> str:
        source = m.group(0)
        changed = False

        def attr(a: re.Match) -> str:
            nonlocal changed
            url = a.group(3) if a.group(3) is not None else a.group(4)
            if not _ABSOLUTE.match(url):
                return a.group(0)
            changed = True
            local = _local(url, targets)
            if local is None:
                dropped.append(url)
                return f'data-offline-{a.group(1).lower()}="{html.escape(html.unescape(url))}"'
            return f'{a.group(1)}="{html.escape(posixpath.relpath(local, page_dir))}"'

        out = _URL_ATTR.sub(attr, source)
        return _DROP_ATTR.sub("", out) if changed else out

    def css_url(m: re.Match) -> str:
        local = _local(m.group(2), targets)
        if local is None:
            dropped.append(m.group(2))
            return 'url("data:,")'          # loads nothing (the rule shows no picture)
        return f'url("{posixpath.relpath(local, page_dir)}")'

    text = _LOADING_TAG.sub(tag, text)
    text = _CSS_URL.sub(css_url, text)
    if _CSP_META not in text:
        text, n = re.subn(r"<head\b[^>]*>", lambda h: h.group(0) + "\n    " + _CSP_META, text, count=1, flags=re.I)
        if not n:
            text = _CSP_META + text
    return text, dropped


def localize(site: str | os.PathLike, assets_dir: str | os.PathLike, since: float | None = None) -> dict[str, int]:
    """Copy the assets into site/static/vendor/ and rewrite every page of the site (since: only the pages
    written at or after that time, as time.time() gives it: an incremental build's); counts of what was done."""
    assets = load()
    lacking = missing(assets_dir, assets)
    if lacking:
        raise AssetsError(f"Data Docs assets missing in {assets_dir} ({lacking[0]} and {len(lacking) - 1} more): "
                          "run ./build.sh (it fetches them from the npm registry)")
    root = Path(site)
    for p in assets.packages:
        target = root / VENDOR / p.folder
        for path in p.paths():
            src, dst = Path(assets_dir) / p.folder / path, target / path
            if dst.is_file() and dst.stat().st_size == src.stat().st_size:
                continue      # copied by an earlier build (assets are pinned by digest: same size, same file)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
    targets = assets.targets()
    pages = rewritten = 0
    dropped: set[str] = set()
    for page in sorted(root.rglob("*.html")):
        if since is not None and page.stat().st_mtime < since:
            continue
        pages += 1
        rel_dir = page.parent.relative_to(root).as_posix()
        text = page.read_text(encoding="utf-8")
        new, gone = rewrite_page(text, rel_dir, targets)
        dropped.update(gone)
        if new != text:
            page.write_text(new, encoding="utf-8")
            rewritten += 1
    for url in sorted(dropped):
        log.warning("Data Docs: %s is not in conf/%s; the pages no longer load it", url, ASSETS_FILE)
    return {"pages": pages, "rewritten": rewritten, "dropped": len(dropped)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m s1mmalign.validate.docs_offline", description=__doc__.splitlines()[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--fetch", metavar="DIR", help="download the assets of conf/data_docs_assets.yaml into DIR")
    g.add_argument("--check", metavar="DIR", help="exit 1 unless DIR holds every asset")
    args = p.parse_args(argv)
    try:
        if args.check:
            lacking = missing(args.check)
            if lacking:
                print(f"docs_offline: {len(lacking)} asset(s) missing in {args.check}, e.g. {lacking[0]}",
                      file=sys.stderr)
                return 1
            return 0
        folders = fetch(args.fetch)
    except AssetsError as exc:
        print(f"docs_offline: {exc}", file=sys.stderr)
        return 1
    print(f"docs_offline: {len(folders)} packages in {args.fetch}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
