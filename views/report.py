"""What ``fsl report DIR`` prints: the run's rounds as a table (at most ``MAX_ROWS``,
evenly spaced, the last always; report.html has every one) and its last round measured
against the plan (as ``fsl train`` ends)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from views.train import render_last_round
from trainer.run.runfiles import RunFolder, spaced

MAX_ROWS = 20


def _f(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def render_report(run: RunFolder, out: Console) -> None:
    rows = run.rows
    t = Table(title=f"{run.path}: {len(rows)} rounds", title_justify="left")
    for col in ("round", "G loss", "D loss", "FID", "KID", "confidence", "round s", "plan s", "epsilon", "notes"):
        t.add_column(col, justify="left" if col in ("D loss", "epsilon", "notes") else "right")
    for i in spaced(len(rows), MAX_ROWS):
        r = rows[i]
        t.add_row(str(r.round), _f(r.g_loss, ".3f"), ", ".join(f"{c} {_f(v, '.3f')}" for c, v in r.d_loss.items()),
                  _f(r.quality.get("fid"), ".1f"), _f(r.quality.get("kid"), ".3g"),
                  _f(r.quality.get("confidence"), ".3f"), _f(r.round_time_s, ".2f"),
                  _f(r.predicted_round_time_s, ".2f"), ", ".join(f"{c} {v:.3g}" for c, v in r.epsilon.items()),
                  "; ".join(r.notes))
    if len(rows) > MAX_ROWS:
        t.caption, t.caption_justify = f"{MAX_ROWS} of {len(rows)} rounds, evenly spaced; all in report.html", "left"
    out.print(t)
    if run.history and run.history[-1].get("devices"):
        render_last_round(run.history[-1], out)
    if run.plan:
        solver = run.plan.get("solver") or {}
        out.print(f"plan: {solver.get('name')} ({solver.get('status')}), objective {run.plan.get('objective')}, "
                  f"predicted round {run.plan.get('round_time_s', 0):.3f} s per step", highlight=False)
