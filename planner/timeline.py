"""A client's step as a timeline: one row per device and per link, one box per micro-batch.

:func:`predicted_boxes` lays out the schedule SPEC §2.1's step time assumes: ``M``
identical micro-batches through the line of units (stage 0, cut 0, stage 1, ...), each
unit working on one micro-batch at a time and starting the next as soon as both the
unit is free and the micro-batch has left the unit before (GPipe fill-drain; the
micro-batch's forward and backward through a stage are one box of ``C / M +
overhead``). The last box ends at ``sum(u) + (M - 1) * max(u)``, the plan's step::

    a-phone   |m0|m1|m2|
    a->b         |m0|m1|m2|
    b-laptop        |m0 |m1 |m2 |      <- bottleneck: the fill, then one box per m

:func:`draw` renders any list of :class:`Box` (predicted here; the trainer can pass
boxes from measured timestamps) as one panel per client with matplotlib.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from planner.planfile import PlannedClient


@dataclass(frozen=True)
class Box:
    """One unit of work on one row: a stage's compute or a cut's transfer."""

    row: str  # device name, or "a→b" for a link
    start_s: float
    end_s: float
    label: str  # what is in the box, e.g. "m2" (micro-batch 2)
    kind: str = "compute"  # compute | transfer
    bottleneck: bool = False  # the row is the step's slowest unit


def schedule(units_s: Sequence[float], rows: Sequence[str], kinds: Sequence[str], micro_batches: int) -> list[Box]:
    """The fill-drain schedule of ``micro_batches`` identical jobs through ``units_s``."""
    top = max(range(len(units_s)), key=lambda k: units_s[k])
    free = [0.0] * len(units_s)  # when each unit finishes its previous micro-batch
    boxes = []
    for m in range(micro_batches):
        ready = 0.0
        for k, u in enumerate(units_s):
            start = max(ready, free[k])
            ready = free[k] = start + u
            boxes.append(Box(rows[k], start, ready, f"m{m}", kinds[k], k == top))
    return boxes


def predicted_boxes(client: PlannedClient) -> list[Box]:
    """The planned schedule of one step of ``client`` (module docstring)."""
    rows, kinds = [], []
    for k, s in enumerate(client.stages):
        rows.append(s.device)
        kinds.append("compute")
        if k + 1 < len(client.stages):
            rows.append(f"{s.device}→{client.stages[k + 1].device}")
            kinds.append("transfer")
    return schedule(client.units_s(), rows, kinds, client.micro_batches)


def draw(panels: Sequence[tuple[str, Sequence[Box]]], path: str | Path) -> None:
    """One horizontal-bar panel per ``(title, boxes)``; rows in order of first appearance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heights = [max(1, len({b.row for b in boxes})) for _, boxes in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 1.2 + 0.45 * sum(heights) + 0.6 * len(panels)),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, (title, boxes) in zip(axes[:, 0], panels):
        rows = list(dict.fromkeys(b.row for b in boxes))
        end = max((b.end_s for b in boxes), default=0.0) or 1.0
        for y, row in enumerate(rows):
            mine = [b for b in boxes if b.row == row]
            hot = any(b.bottleneck for b in mine)
            ax.broken_barh([(b.start_s, b.end_s - b.start_s) for b in mine], (y - 0.3, 0.6),
                           facecolors="tab:blue" if mine[0].kind == "compute" else "tab:orange", alpha=0.85,
                           edgecolors="red" if hot else "black", linewidth=1.6 if hot else 0.5, hatch="//" if hot else None)
            for b in mine:  # label the boxes wide enough to hold one
                if b.end_s - b.start_s > end / 60:
                    ax.text((b.start_s + b.end_s) / 2, y, b.label, ha="center", va="center", fontsize=6)
        labels = [r + ("  (bottleneck)" if any(b.bottleneck and b.row == r for b in boxes) else "") for r in rows]
        ax.set_yticks(range(len(rows)), labels, fontsize=8)
        ax.set_ylim(len(rows) - 0.5, -0.5)
        ax.set_title(title, fontsize=9, loc="left")
        ax.set_xlim(0, end * 1.02)
    axes[-1, 0].set_xlabel("seconds into the step (blue: compute, orange: transfer; red hatch: bottleneck)")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_plan(clients: Sequence[PlannedClient], path: str | Path) -> None:
    """Every planned client's predicted step (:func:`predicted_boxes`) in one figure."""
    panels = [(f"{c.name}: M = {c.micro_batches}, step {c.step_time_s:.3f} s", predicted_boxes(c))
              for c in clients if c.status == "planned"]
    draw(panels, path)
