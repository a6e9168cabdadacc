"""What every experiment of ``benchmarks/experiments.py`` is handed: its sizes, a scratch
folder, results shared between experiments, and where its figure goes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from benchmarks.common import ROOT  # noqa: E402

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

    def out(self, name: str) -> Path:
        d = self.tmp / name
        d.mkdir(parents=True, exist_ok=True)
        return d


def save_figure(fig, name: str) -> str:
    """Save ``fig`` as ``benchmarks/figures/NAME.png``; returns the markdown image link."""
    import matplotlib.pyplot as plt

    FIGURES.mkdir(parents=True, exist_ok=True)
    path = FIGURES / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"![{name}](benchmarks/figures/{name}.png)"
