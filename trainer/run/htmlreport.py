"""``DIR/report.html``: one self-contained page for a run (``fsl report DIR``), opened from
disk in any browser: every round's numbers, the run's figures and sample grids embedded
as base64 PNG (no other file, no server, no script), the last round measured against
the plan, the plan and the resolved options."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from planner.explain import format_bytes
from planner.jsonio import write_atomic
from trainer.run.runfiles import RunFolder, shown_grids

REPORT_FILE = "report.html"
STYLE = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}"
         "table{border-collapse:collapse;font-size:13px;margin:1em 0}"
         "th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}"
         "td.l,th.l{text-align:left}figure{display:inline-block;margin:0 1em 1em 0}"
         "img{max-width:100%}figcaption{font-size:13px;color:#555}")


def _num(v, fmt: str = ".4g") -> str:
    return "" if v is None else format(v, fmt)


def _png(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(head: list[str], rows: list[list[str]], *, left: int = 1) -> str:
    """``rows`` of already-escaped cells; the first ``left`` columns align left."""
    def cells(tag: str, values: list[str]) -> str:
        return "".join(f'<{tag}{" class=l" if i < left else ""}>{v}</{tag}>' for i, v in enumerate(values))

    body = "".join(f"<tr>{cells('td', r)}</tr>" for r in rows)
    return f"<table><tr>{cells('th', [html.escape(h) for h in head])}</tr>{body}</table>"


def _rounds(run: RunFolder) -> str:
    e = html.escape
    rows = [[e(str(r.round)), _num(r.g_loss), e(", ".join(f"{c} {_num(v)}" for c, v in r.d_loss.items())),
             _num(r.quality.get("fid"), ".2f"), _num(r.quality.get("kid"), ".4g"),
             _num(r.quality.get("confidence"), ".3f"), _num(r.round_time_s, ".2f"),
             _num(r.predicted_round_time_s, ".2f"),
             e(", ".join(f"{c} {v:.3g}" for c, v in r.epsilon.items())), e("; ".join(r.notes))]
            for r in run.rows]
    head = ["round", "G loss", "D loss per client", "FID", "KID", "confidence", "round s",
            "round s (plan)", "epsilon", "notes"]
    return f'<h2 id="rounds">Rounds</h2>{_table(head, rows)}'


def _devices(last: dict) -> str:
    rows = []
    for name, d in (last.get("devices") or {}).items():
        predicted, measured = d.get("predicted_compute_s"), d.get("compute_s")
        error = f"{(measured - predicted) / predicted:+.0%}" if predicted and measured is not None else ""
        rows.append([html.escape(str(d.get("client", ""))), html.escape(name), _num(predicted, ".3f"),
                     _num(measured, ".3f"), error, format_bytes(d.get("bytes_sent", 0)),
                     format_bytes(d.get("bytes_received", 0))])
    if not rows:
        return ""
    head = ["client", "device", "predicted compute s per step", "measured", "error", "sent", "received"]
    return f"<h2>Round {last['round']}: measured against the plan</h2>{_table(head, rows, left=2)}"


def _plan(plan: dict | None) -> str:
    if not plan:
        return ""
    e = html.escape
    solver = plan.get("solver") or {}
    rows = []
    for c in plan.get("clients", []):
        stages = ", ".join(f"{s['device']} [{s['start']}, {s['end']})" for s in c.get("stages", []))
        rows.append([e(c["name"]), e(c.get("status", "")), e(stages or (c.get("reason") or "")),
                     _num(c.get("step_time_s"), ".3f")])
    return (f"<h2>Plan</h2><p>model {e(str((plan.get('model') or {}).get('name')))}, batch "
            f"{e(str(plan.get('batch_size')))}, objective {e(str(plan.get('objective')))}, solver "
            f"{e(str(solver.get('name')))} ({e(str(solver.get('status')))}), predicted round "
            f"{_num(plan.get('round_time_s'), '.3f')} s per step</p>"
            + _table(["client", "status", "stages (device [first, end) layers) or reason", "step s"], rows, left=3))


def _config(config: dict | None) -> str:
    if not config:
        return ""
    rows = [[html.escape(k), html.escape(str(v).lower() if isinstance(v, bool) else str(v))]
            for k, v in config.items()]
    return f"<h2>Options (config.toml)</h2>{_table(['key', 'value'], rows, left=2)}"


def render_html(run: RunFolder) -> str:
    """The whole page as one string."""
    e = html.escape
    last = run.rows[-1] if run.rows else None
    quality = ", ".join(f"{k} {v:.3g}" for k, v in last.quality.items()) if last else ""
    summary = (f"{len(run.rows)} rounds in metrics.jsonl" + (f"; round {last.round}: {quality}" if quality else ""))
    figures = "".join(f"<figure>{_png(p, name)}<figcaption>{e(name)}</figcaption></figure>"
                      for name, p in run.figures.items())
    grids = "".join(f'<figure id="grid-{r}">{_png(run.grids[r], f"samples round {r}")}'
                    f"<figcaption>samples, round {r}</figcaption></figure>" for r in shown_grids(run))
    parts = [f"<!DOCTYPE html><html><head><meta charset=utf-8><title>fsl run {e(str(run.path))}</title>",
             f"<style>{STYLE}</style></head><body><h1>Run {e(str(run.path))}</h1><p>{e(summary)}</p>",
             f"<h2>Sample grids</h2>{grids}" if grids else "", _rounds(run),
             f"<h2>Figures</h2>{figures}" if figures else "",
             _devices(run.history[-1]) if run.history else "", _plan(run.plan), _config(run.config),
             "</body></html>\n"]
    return "".join(parts)


def write_html(run: RunFolder) -> Path:
    """Write ``run.path/report.html``; returns its path."""
    path = run.path / REPORT_FILE
    write_atomic(path, render_html(run))
    return path
