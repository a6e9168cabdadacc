"""mkdocs hook: the site also serves the repository files the pages link to.

The pages link files outside docs/ as they are laid out in the repository, so that the
links work when the markdown is read on a forge or in a checkout (``../BENCHMARKS.md``,
``../benchmarks/figures/x.png``). The site serves each such file under ``repo/`` at its
path in the repository (``repo/BENCHMARKS.md``, a page; ``repo/benchmarks/figures/x.png``)
and every relative link, in the pages and in those files, is rewritten to where its
target is served. A link to a file that exists nowhere is left as it is, so
``mkdocs build --strict`` still fails on it. Files are found by following the links
from the pages and the nav, transitively (a top-level markdown file's links count too)."""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PREFIX = "repo"  # where files from outside docs/ are served
LINK = re.compile(r"\]\(([^)\s#]+)(#[^)\s]*)?\)")


def _served(path: Path) -> str | None:
    """The site path of a repository file (docs/x.md -> x.md, BENCHMARKS.md -> repo/BENCHMARKS.md)."""
    if not path.is_file() or ROOT not in path.parents:
        return None
    if DOCS in path.parents:
        return path.relative_to(DOCS).as_posix()
    return f"{PREFIX}/{path.relative_to(ROOT).as_posix()}"


def _targets(source: Path):
    """(link as written, anchor, the file it names) for each relative link of a markdown file."""
    for target, anchor in LINK.findall(source.read_text()):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("/"):
            continue
        yield target, anchor, (source.parent / target).resolve()


def _nav_paths(nav) -> set[str]:
    if isinstance(nav, str):
        return {nav}
    if isinstance(nav, dict):
        return set().union(*(_nav_paths(v) for v in nav.values()))
    if isinstance(nav, list):
        return set().union(*(_nav_paths(v) for v in nav)) if nav else set()
    return set()


def on_files(files, config):
    """Adds every file outside docs/ that the nav names (``repo/X``) or a page links to."""
    todo = [ROOT / p[len(PREFIX) + 1:] for p in _nav_paths(config["nav"]) if p.startswith(PREFIX + "/")]
    todo += [f for page in DOCS.rglob("*.md") for _, _, f in _targets(page)]
    seen = set()
    while todo:
        path = todo.pop()
        served = _served(path)
        if served is None or not served.startswith(PREFIX + "/") or served in seen:
            continue
        seen.add(served)
        files.append(File.generated(config, served, abs_src_path=str(path)))
        if path.suffix == ".md":
            todo += [t for _, _, t in _targets(path)]
    return files


def on_page_markdown(markdown, page, config, files):
    """Each relative link that names a served file points to where the site serves it."""
    src = page.file.abs_src_path
    if src is None:
        return markdown
    here = posixpath.dirname(page.file.src_uri)
    base = Path(src).resolve().parent

    def relink(m: re.Match) -> str:
        target, anchor = m.group(1), m.group(2) or ""
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("/"):
            return m.group(0)
        served = _served((base / target).resolve())
        if served is None:
            return m.group(0)
        return f"]({posixpath.relpath(served, here or '.')}{anchor})"

    return LINK.sub(relink, markdown)
