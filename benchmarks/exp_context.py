"""What every experiment of ``benchmarks/experiments.py`` is handed: its sizes, a scratch
folder, results shared between experiments, and where its figure and section go."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import os  # noqa: E402

from benchmarks.common import BENCHMARKS_MD, ROOT  # noqa: E402

FIGURES = ROOT / "benchmarks" / "figures"

# Sizes: steps/rounds per experiment. Full mode is sized for ~40 minutes on 2 cores, most
# of it the GAN runs: 150 steps each, enough for FID to fall from ~70 to ~20 (quick start).
FULL = dict(
    pq_steps=3,  # plan-quality: steps of the timed round per (profile, solver), after a warm-up round
    pq_random_clients=3,  # clients of the random fleet (3 devices each)
    clients_counts=(1, 2, 4, 8), clients_rounds=15, clients_steps=10, clients_eval_every=3,
    niid_rounds=15, niid_steps=10, niid_eval_every=3, niid_extra_seeds=(1,),
    comm_steps=2, comm_points=13,  # bandwidth grid: 1..10,000 Mbps, log-spaced
    strag_rounds=2, strag_steps=3, strag_slow=10.0, strag_slack=3.0,
)
QUICK = dict(
    pq_steps=1, pq_random_clients=2,
    clients_counts=(1, 2, 4, 8), clients_rounds=2, clients_steps=2, clients_eval_every=1,
    niid_rounds=2, niid_steps=1, niid_eval_every=2, niid_extra_seeds=(1,),
    comm_steps=1, comm_points=9,
    strag_rounds=1, strag_steps=2, strag_slow=10.0, strag_slack=3.0,
)


@dataclass
class Context:
    quick: bool
    tmp: Path
    size: dict
    cache: dict = field(default_factory=dict)  # results shared between experiments
    md: Path = BENCHMARKS_MD  # the markdown file that receives each experiment's section
    figures: Path = FIGURES  # the folder that receives each experiment's figure

    def out(self, name: str) -> Path:
        d = self.tmp / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def save_figure(self, fig, name: str) -> str:
        """Save ``fig`` as ``FIGURES/NAME.png``; returns the image link, relative to ``md``."""
        return save_figure(fig, name, folder=self.figures, md=self.md)


def save_figure(fig, name: str, *, folder: Path = FIGURES, md: Path = BENCHMARKS_MD) -> str:
    """Save ``fig`` as ``folder/NAME.png`` (``benchmarks/figures`` by default); returns the
    markdown image link as seen from ``md`` (BENCHMARKS.md by default)."""
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    link = Path(os.path.relpath(path.resolve(), md.resolve().parent)).as_posix()
    return f"![{name}]({link})"
