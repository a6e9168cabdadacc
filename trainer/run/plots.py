"""Pictures of a run: losses and FID over rounds; predicted against measured time."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from planner.jsonio import write_atomic  # noqa: E402

MAX_BARS = 40  # more devices than this: times.png is a scatter, not a bar per device


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    write_atomic(path, buf.getvalue())


def plot_losses(history: list[dict], path: Path) -> None:
    rounds = [h["round"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(rounds, [h["g_loss"] for h in history], "k-o", ms=3, label="generator")
    for key, name in (("d_loss", "D"), ("d_loss_fake", "D on fakes")):  # under DP only the fake half is known
        d = [h.get(key) or {} for h in history]
        for c in sorted({c for row in d for c, v in row.items() if v is not None}):
            pts = [(h["round"], row[c]) for h, row in zip(history, d) if row.get(c) is not None]
            ax.plot(*zip(*pts), "--", label=f"{name} {c}")
    ax.set_xlabel("round")
    ax.set_ylabel("loss (BCE)")
    ax.grid(alpha=0.3)
    lines, labels = ax.get_legend_handles_labels()
    evals = [h for h in history if h.get("fid") is not None]
    if evals:
        ax2 = ax.twinx()
        lf = ax2.plot([h["round"] for h in evals], [h["fid"] for h in evals], "r-s", ms=4, label="FID")
        ax2.set_ylabel("FID (classifier features)", color="r")
        lines, labels = lines + lf, labels + ["FID"]
    ax.legend(lines, labels, fontsize=8, loc="upper right")
    ax.set_title("losses and FID over rounds")
    _save(fig, path)


def plot_times(history: list[dict], path: Path) -> None:
    """Per device: predicted against measured compute per step, last round."""
    last = history[-1]["devices"]
    names = list(last)
    if len(names) > MAX_BARS:
        return _scatter_times(history, path)
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(names) + 2), 4))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [last[n]["predicted_compute_s"] for n in names], 0.4, label="predicted")
    ax.bar([x + 0.2 for x in xs], [last[n]["compute_s"] for n in names], 0.4, label="measured")
    ax.set_xticks(list(xs), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("compute seconds per step")
    ax.set_title(f"round {history[-1]['round']}: predicted vs measured compute per device")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def _scatter_times(history: list[dict], path: Path) -> None:
    """Many devices: one dot per device, measured against predicted, and the diagonal."""
    last = history[-1]["devices"].values()
    fig, ax = plt.subplots(figsize=(5, 5))
    x, y = [d["predicted_compute_s"] for d in last], [d["compute_s"] for d in last]
    ax.scatter(x, y, s=8, alpha=0.6)
    top = max(x + y)
    ax.plot([0, top], [0, top], "k--", lw=1, label="as predicted")
    ax.set_xlabel("predicted compute s per step")
    ax.set_ylabel("measured compute s per step")
    ax.set_title(f"round {history[-1]['round']}: {len(x)} devices")
    ax.legend()
    _save(fig, path)


def plot_run(history: list[dict], out: Path) -> None:
    if history:
        plot_losses(history, Path(out) / "losses.png")
        plot_times(history, Path(out) / "times.png")
