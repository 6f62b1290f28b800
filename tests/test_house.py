"""The house rules that code review would otherwise have to remember: ruff's config passes, layers point
down (no library module imports cli; every user-facing error is an errors.JobError), fixtures are shared
through conftest.py rather than imported from other test modules."""

from __future__ import annotations

import ast
import subprocess

from helpers import BIN, REPO

LIB = REPO / "lib" / "s1mmalign"


def _imports(path) -> set[str]:
    """Every module a file imports, as dotted names (`from s1mmalign import cli` counts as s1mmalign.cli)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def test_ruff_passes_on_the_whole_tree():
    proc = subprocess.run([str(BIN / "ruff"), "check", "--no-cache", "."], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_no_library_module_imports_cli():
    offenders = sorted(p.name for p in LIB.glob("*.py") if p.name != "cli.py" and "s1mmalign.cli" in _imports(p))
    assert offenders == []


def test_every_error_a_job_maps_to_exit_2_is_a_job_error():
    """cli.main turns errors.JobError into one line and exit 2: each module's user-facing error class
    derives from it, so a new module's error cannot be forgotten in cli's except clause."""
    import importlib

    from s1mmalign.errors import JobError

    user_facing = {"analytics": "ViewError", "clip": "ClipError", "config": "ConfigError", "export": "ExportError",
                   "lease": "LeaseLost", "quality": "SuiteError", "session": "LakeBusy", "storage": "SourceError",
                   "errors": "LakeError"}
    for module, name in user_facing.items():
        cls = getattr(importlib.import_module(f"s1mmalign.{module}"), name)
        assert issubclass(cls, JobError), f"s1mmalign.{module}.{name}"


def test_no_test_module_imports_another():
    """Shared fixtures live in conftest.py and shared helpers in helpers.py/hostile.py; importing a test
    module from another would run its module-level setup and hide where a fixture comes from."""
    offenders = {p.name: sorted(m for m in _imports(p) if m.split(".")[0].startswith("test_"))
                 for p in (REPO / "tests").glob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}
