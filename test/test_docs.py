"""The docs: generated reference pages are current, and every relative link resolves."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

_GENERATOR = REPO_ROOT / "scripts" / "gen_reference.py"
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def _markdown_files() -> list[Path]:
    return [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").rglob("*.md"))]


def test_generated_reference_is_current() -> None:
    """docs/reference/{parameters,cli,messages}.md equal what the code generates now."""
    result = subprocess.run(
        [sys.executable, str(_GENERATOR), "--check"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr + result.stdout


def test_check_reports_a_stale_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--check exits 1 and names the page when a page differs from the generated one."""
    spec = importlib.util.spec_from_file_location("gen_reference", _GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setenv("COLUMNS", "100")  # the generator sets it; restore it afterwards
    monkeypatch.setattr(module, "ROOT", tmp_path)
    monkeypatch.setattr(module, "REFERENCE", tmp_path / "docs" / "reference")
    assert module.main([]) == 0
    assert module.main(["--check"]) == 0
    page = tmp_path / "docs" / "reference" / "parameters.md"
    page.write_text(page.read_text().replace("| `tau_v` |", "| `tau_video` |"))
    assert module.main(["--check"]) == 1


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    """Every relative link of README.md and docs/*.md points to an existing file or folder."""
    text = _FENCE.sub("", path.read_text())
    broken = []
    for target in _LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # http(s):, mailto:, or an anchor in this page
        if not (path.parent / target.split("#", 1)[0]).exists():
            broken.append(target)
    assert not broken, f"{path.relative_to(REPO_ROOT)}: broken links {broken}"
