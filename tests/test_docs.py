"""The README fits on a few screens, every relative link in it and in docs/ names a file that
exists, and ``mkdocs build --strict`` renders docs/ (slow tier; skipped where mkdocs is not
installed: ``pip install -e ".[docs]"``). The link check reads the files itself, apart from
mkdocs; the strict build is also shown to fail on a broken link, so its pass means something."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)\s]*)?\)")
PAGES = sorted(DOCS.glob("*.md"))
HAS_MKDOCS = importlib.util.find_spec("mkdocs") is not None and importlib.util.find_spec("material") is not None


def relative_links(md: Path) -> list[str]:
    return [t for t in LINK.findall(md.read_text()) if not re.match(r"^[a-z][a-z0-9+.-]*:", t) and not t.startswith("/")]


def test_readme_fits_on_a_few_screens():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


@pytest.mark.parametrize("md", [ROOT / "README.md", ROOT / "BENCHMARKS.md", *PAGES], ids=lambda p: p.name)
def test_every_relative_link_names_a_file(md):
    missing = [t for t in relative_links(md) if not (md.parent / t).exists()]
    assert missing == []


def test_every_page_is_in_the_nav_and_every_nav_entry_exists():
    nav = re.findall(r"^\s*- [^:\n]+: (\S+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), re.M)
    pages = {p for p in nav if not p.startswith("repo/")}
    assert pages == {p.name for p in PAGES}
    for p in nav:  # repo/X is served from the repository's top by docs/hooks.py
        assert (ROOT / p.removeprefix("repo/") if p.startswith("repo/") else DOCS / p).is_file(), p


def test_the_readme_links_every_page():
    text = (ROOT / "README.md").read_text()
    assert {p.name for p in PAGES} - {"index.md"} <= {Path(t).name for t in LINK.findall(text) if t.startswith("docs/")}


def _build(root: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(root / "mkdocs.yml"),
                           "-d", str(site)], cwd=root, capture_output=True, text=True, timeout=300,
                          env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"})


@pytest.mark.slow
@pytest.mark.skipif(not HAS_MKDOCS, reason='mkdocs not installed: pip install -e ".[docs]"')
def test_mkdocs_build_strict(tmp_path):
    done = _build(ROOT, tmp_path / "site")
    assert done.returncode == 0, done.stderr[-3000:]
    site = tmp_path / "site"
    assert (site / "planning" / "index.html").is_file() and (site / "repo" / "BENCHMARKS" / "index.html").is_file()
    # a page's figure outside docs/ is served, and the page points at it
    privacy = (site / "privacy" / "index.html").read_text()
    assert 'src="../repo/benchmarks/figures/privacy-samples-nodp-600.png"' in privacy
    assert (site / "repo" / "benchmarks" / "figures" / "privacy-samples-nodp-600.png").is_file()


@pytest.mark.slow
@pytest.mark.skipif(not HAS_MKDOCS, reason='mkdocs not installed: pip install -e ".[docs]"')
def test_mkdocs_strict_fails_on_a_broken_link(tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(DOCS, copy / "docs")
    shutil.copy(ROOT / "mkdocs.yml", copy)
    for name in ("README.md", "BENCHMARKS.md", "SECURITY.md", "RELIABILITY.md"):
        shutil.copy(ROOT / name, copy)
    shutil.copytree(ROOT / "benchmarks" / "figures", copy / "benchmarks" / "figures")
    assert _build(copy, tmp_path / "ok").returncode == 0
    page = copy / "docs" / "planning.md"
    page.write_text(page.read_text() + "\nSee [the figure](../benchmarks/figures/no-such-figure.png).\n")
    done = _build(copy, tmp_path / "broken")
    assert done.returncode != 0 and "no-such-figure.png" in done.stderr
