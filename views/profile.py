"""What ``fsl profile`` measured, as a person reads it: per layer its FLOPs, parameters,
memory, measured time and whether the model may be cut after it."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from planner.explain import format_bytes
from planner.profile import ModelProfile


def render_profile(prof: ModelProfile, name: str, cuts: set[int], con: Console) -> None:
    """``cuts``: the layers after which the model may be cut (``planner.graph.legal_cuts``)."""
    t = Table(title=f"{name}: one GAN training step at batch {prof.batch_size} on {prof.host} "
                    f"({prof.threads} threads, torch {prof.torch_version})", title_justify="left")
    for col in ("#", "layer", "kind", "params", "MFLOPs", "output", "memory", "time ms", "cut after"):
        t.add_column(col, justify="left" if col in ("layer", "kind", "output") else "right")
    for i, lp in enumerate(prof.layers):
        note = "yes" if i in cuts else ("—" if i == len(prof.layers) - 1 else "[dim]no[/]")
        flops = f"{lp.flops / 1e6:,.1f}" + (" [red]+?[/]" if lp.uncounted_ops else "")
        t.add_row(str(i), lp.name, lp.kind, f"{lp.params:,}", flops, "x".join(map(str, lp.output_shape)),
                  format_bytes(lp.memory_bytes), f"{lp.time_s * 1e3:.2f}", note)
    t.caption = (f"total {sum(x.params for x in prof.layers):,} params, "
                 f"{prof.step_time_s * 1e3:.1f} ms per step; FLOPs: one forward of one batch")
    t.caption_justify = "left"
    con.print(t)
    missing = sorted({op for lp in prof.layers for op in lp.uncounted_ops})
    if missing:
        con.print(f"[red]FLOPs not counted for: {', '.join(missing)}[/]")
