"""Data Docs with no network (s1mmalign.docs_offline) and Great Expectations' switches (quality.Runner):
every URL GE's templates load is served locally, pages are rewritten relative to their depth, what is not
listed is never loaded, tampered downloads are refused, analytics are off unless asked, and the `cdn`,
`off` and missing-assets cases do what the conf says. (The pages of a real validation are opened in
Chromium with the network blocked in test_validate.)"""

from __future__ import annotations

import dataclasses
import io
import re
import tarfile
from pathlib import Path

import pytest
import yaml

from helpers import REPO, browse
from s1mmalign.validate import docs_offline, quality

TEMPLATES = Path(__import__("great_expectations").__file__).parent / "render" / "view" / "templates"


def installed() -> Path:
    assets = quality.docs_assets(quality.QualityConf())
    if docs_offline.missing(assets):
        pytest.fail(f"Data Docs assets are not installed in {assets}: ./build.sh fetches them")
    return assets


def test_every_url_gx_templates_load_is_served_locally():
    targets = docs_offline.load().targets()
    seen = set()
    for template in TEMPLATES.glob("*.j2"):
        for tag in re.findall(r"<(?:script|link)\b[^>]*>", template.read_text()):
            for url in re.findall(r"""(?:src|href)=["'](https?://[^"']+)["']""", tag):
                seen.add(url)
                assert docs_offline._local(url, targets), \
                    f"{template.name} loads {url}: add it to {docs_offline.ASSETS_FILE}"
    # the logo's URL is built in the template from a variable, then given the context id in a query string
    logo = "https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/logo-long.png?d=20260101T000000Z&dataContextId=x"
    assert docs_offline._local(logo, targets) == "static/images/logo-long.png"
    assert len(seen) >= 15, seen
    styles = (TEMPLATES.parent / "static" / "styles" / "data_docs_default_styles.css").read_text()
    rewritten, _ = docs_offline.rewrite_page(f"<html><head><style>{styles}</style></head></html>", ".", targets)
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", rewritten)


def test_the_installed_assets_are_every_listed_file():
    assets = installed()
    assert docs_offline.missing(assets) == []
    jquery = assets / "jquery@3.7.1" / "dist" / "jquery.min.js"
    assert jquery.read_bytes().startswith(b"/*! jQuery v3.7.1")
    fonts = assets / "fortawesome+fontawesome-free@6.6.0"
    css = (fonts / "css" / "all.min.css").read_text()
    for ref in set(re.findall(r"url\(\.\./(webfonts/[^)]+)\)", css)):   # every font the CSS names is there
        assert (fonts / ref).is_file(), ref


GE_ASSETS = "https://great-expectations-web-assets.s3.us-east-2.amazonaws.com"
PAGE = f"""<!DOCTYPE html><html><head><meta charset="utf-8">
<script src="https://code.jquery.com/jquery-3.7.1.min.js"></script>
<link rel="stylesheet" href="https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css"/>
<script src="https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js" integrity="sha384-abc" \
crossorigin="anonymous"></script>
<script src="https://evil.example/track.js"></script>
<script src="./static/local.js"></script>
<style>.logo {{ background: url('{GE_ASSETS}/full_logo_dark.png') 0 0; }}
.x {{ background: url({GE_ASSETS}/logo-long.png) }}</style>
</head><body>
<img src="{GE_ASSETS}/logo-long.png?d=1&amp;dataContextId=42">
<a href="https://greatexpectations.io">Great Expectations</a>
</body></html>"""


def test_a_page_is_rewritten_relative_to_its_depth_and_loads_nothing_else():
    targets = docs_offline.load().targets()
    text, dropped = docs_offline.rewrite_page(PAGE, "validations/a/b", targets)
    assert 'src="../../../static/vendor/jquery@3.7.1/dist/jquery.min.js"' in text
    assert 'href="../../../static/vendor/bootstrap@4.3.1/dist/css/bootstrap.min.css"' in text
    assert 'src="../../../static/images/logo-long.png"' in text
    assert "integrity" not in text and "crossorigin" not in text    # GE's SRI hashes: not of these files' URLs
    assert dropped == ["https://evil.example/track.js",
                       "https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/full_logo_dark.png"]
    assert """.logo { background: url("data:,") 0 0; }""" in text
    assert '.x { background: url("../../../static/images/logo-long.png") }' in text
    assert 'data-offline-src="https://evil.example/track.js"' in text and not re.search(r'\ssrc="https://evil', text)
    assert 'src="./static/local.js"' in text                # relative URLs are the site's own
    assert '<a href="https://greatexpectations.io">' in text   # a link loads nothing until clicked
    assert text.count("Content-Security-Policy") == 1 and text.index("Content-Security-Policy") < text.index("<script")
    again, _ = docs_offline.rewrite_page(text, "validations/a/b", targets)
    assert again == text                                     # a second pass changes nothing
    top, _ = docs_offline.rewrite_page(PAGE, ".", targets)
    assert 'src="static/vendor/jquery@3.7.1/dist/jquery.min.js"' in top
    assert not re.search(r"""<(script|link|img)\b[^>]*\s(src|href)=["']https?:""", text + top)
    assert "url('http" not in text + top and "url(http" not in text + top


def test_a_tampered_download_is_refused(tmp_path):
    """A registry (here a folder) serving different bytes under a package's name: nothing is kept."""
    assets = docs_offline.load()
    first = assets.packages[0]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in first.paths():
            data = b"alert('not jquery')"
            info = tarfile.TarInfo(f"package/{path}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    tarball = Path(first.tarball(str(tmp_path / "registry")))
    tarball.parent.mkdir(parents=True)
    tarball.write_bytes(buf.getvalue())
    dest = tmp_path / "assets"
    with pytest.raises(docs_offline.AssetsError, match="pinned integrity"):
        docs_offline.fetch(dest, registry=(tmp_path / "registry").as_uri())
    assert not (dest / first.folder).exists()
    assert docs_offline.main(["--check", str(dest)]) == 1


def test_the_asset_list_pins_every_package():
    data = yaml.safe_load((REPO / "conf" / docs_offline.ASSETS_FILE).read_text())
    for p in data["packages"]:
        assert re.fullmatch(r"\d+\.\d+\.\d+", str(p["version"])), p["name"]
        assert re.fullmatch(r"sha512-[A-Za-z0-9+/]{86}==", p["integrity"]), p["name"]


# Great Expectations' project: analytics and the three Data Docs modes (no Spark session needed)

def runner(tmp_path: Path, **conf) -> tuple[quality.Runner, Path]:
    docs = tmp_path / "docs"
    return quality.Runner(str(tmp_path / "gx"), str(docs), dataclasses.replace(quality.QualityConf(), **conf)), docs


def project(tmp_path: Path) -> dict:
    return yaml.safe_load((tmp_path / "gx" / "gx" / "great_expectations.yml").read_text())


def test_analytics_are_off_unless_the_conf_asks(tmp_path, monkeypatch):
    monkeypatch.setenv("GX_ANALYTICS_ENABLED", "true")     # even a user's environment saying otherwise
    r, _ = runner(tmp_path)
    assert r.context.get_config().analytics_enabled is False and project(tmp_path)["analytics_enabled"] is False
    import os
    assert os.environ["GX_ANALYTICS_ENABLED"] == "false"
    r, _ = runner(tmp_path, analytics=True)
    assert project(tmp_path)["analytics_enabled"] is True and os.environ["GX_ANALYTICS_ENABLED"] == "true"


def test_offline_docs_load_nothing_from_elsewhere_and_cdn_docs_do(tmp_path):
    installed()
    r, docs = runner(tmp_path)
    index, mode = r.build_docs()
    assert (mode, index) == ("offline", str(docs / "index.html"))
    asked: list[str] = []
    browse(docs / "index.html", tmp_path, asked)     # (what the pages show: test_validate, with results)
    assert [u for u in asked if not u.startswith("file:")] == [], asked
    assert (docs / "static" / "vendor" / "vega@5.33.1" / "build" / "vega.min.js").is_file()
    # the same site as Great Expectations ships it: its scripts come from CDNs (the detector sees them)
    r, docs = runner(tmp_path, data_docs="cdn")
    index, mode = r.build_docs()
    assert mode == "cdn" and "https://cdn.jsdelivr.net/npm/vega@5" in (docs / "index.html").read_text()
    asked = []
    browse(docs / "index.html", tmp_path, asked)
    assert any(u.startswith("https://code.jquery.com/") for u in asked), asked


def test_docs_off_or_without_assets_are_not_built(tmp_path):
    r, docs = runner(tmp_path, docs_assets=str(tmp_path / "nothing-here"))
    index, note = r.build_docs()
    assert index is None and "assets missing" in note and "./build.sh" in note
    assert not (docs / "index.html").exists()
    r, docs = runner(tmp_path, data_docs="off")
    assert r.build_docs() == (None, "off by quality.data_docs")
    assert not (r.context.get_config().data_docs_sites or {}) and not (docs / "index.html").exists()
