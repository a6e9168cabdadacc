"""``benchmarks/experiments.py --quick`` writes a scratch folder, never BENCHMARKS.md or the
committed figures. The experiments themselves are not run: one stand-in experiment draws a
figure through the same Context, so what is checked is where the script puts things."""

import subprocess
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from benchmarks import experiments

ROOT = Path(__file__).resolve().parent.parent
COMMITTED_MD = ROOT / "BENCHMARKS.md"
COMMITTED_FIGURES = ROOT / "benchmarks" / "figures"


def _git_ignored(path: Path) -> bool:
    """git's own answer (not the project's): would ``path`` be left out of a commit?"""
    r = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=ROOT, capture_output=True)
    return r.returncode == 0


def test_quick_defaults_to_a_git_ignored_scratch_folder():
    md, figures = experiments.destinations(quick=True, out=None)
    assert md.resolve() != COMMITTED_MD.resolve()
    assert figures.resolve() != COMMITTED_FIGURES.resolve()
    assert ROOT.resolve() in md.resolve().parents  # inside the checkout, where a user finds it ...
    assert _git_ignored(md) and _git_ignored(figures / "plan-quality.png")  # ... and never committed


def test_full_run_writes_the_committed_files():
    md, figures = experiments.destinations(quick=False, out=None)
    assert (md.resolve(), figures.resolve()) == (COMMITTED_MD.resolve(), COMMITTED_FIGURES.resolve())


@pytest.mark.parametrize("out", [ROOT, ROOT / "benchmarks"])
def test_quick_refuses_an_out_that_is_the_committed_place(out):
    with pytest.raises(ValueError, match="committed"):
        experiments.destinations(quick=True, out=out)
    with pytest.raises(SystemExit) as e:  # the command line says so in one line, exit 2
        experiments.main(["--quick", "--out", str(out), "straggler"])
    assert e.value.code == 2


def test_quick_run_writes_only_under_out(tmp_path, monkeypatch):
    before = {p: p.read_bytes() for p in [COMMITTED_MD, *COMMITTED_FIGURES.glob("*.png")]}
    seen = []

    def stand_in(ctx):
        seen.append((ctx.quick, ctx.md, ctx.figures))
        fig, ax = plt.subplots()
        ax.plot([0, 1], [1, 0])
        return "| a |\n|---|\n| 1 |\n", ctx.save_figure(fig, "straggler")

    monkeypatch.setattr(experiments, "_registry", lambda: {"straggler": stand_in})
    experiments.main(["--quick", "--out", str(tmp_path), "straggler"])

    assert seen == [(True, tmp_path / "BENCHMARKS.md", tmp_path / "figures")]
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert "<!-- exp-straggler:start -->" in text and "--quick" in text
    assert "![straggler](figures/straggler.png)" in text  # the link resolves from the scratch file
    assert (tmp_path / "figures" / "straggler.png").stat().st_size > 0
    after = {p: p.read_bytes() for p in [COMMITTED_MD, *COMMITTED_FIGURES.glob("*.png")]}
    assert after == before
