"""What ``fsl train`` says while it runs and when it ends: a progress bar per round with
the losses and FID, the run's notices (re-planning, plan switches, skipped aggregation,
privacy), and the last round measured against the plan."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from planner.explain import format_bytes


class TrainProgress:
    """``on_start`` / ``on_round`` / ``on_step`` hooks of ``trainer.train`` that print to ``con``
    (a bar of rounds, and one of the run's generator steps).
    ``steps``: the run's generator steps (for the privacy notice)."""

    def __init__(self, con: Console, rounds: int, steps: int, *, disable: bool = False):
        self.con, self.rounds, self.steps = con, rounds, steps
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=con, disable=disable)

    def __enter__(self) -> "TrainProgress":
        self.task = None  # the bar appears once the roles have started: an input error prints only itself
        return self

    def __exit__(self, *exc) -> None:
        if self.task is not None:
            self.bar.__exit__(*exc)

    def on_start(self, info: dict) -> None:
        if self.task is None:
            self.bar.__enter__()
            self.task = self.bar.add_task("round", total=self.rounds, info="starting")
            self.step_task = self.bar.add_task("step", total=self.steps, info="")
        if "replanned" in info:
            r = info["replanned"]
            self.con.print(f"[yellow]lost {r['lost']} in round {r['round']}[/]: re-planned without it, "
                           "resuming from the last checkpoint", highlight=False)
        for w in info.get("warnings", []):
            self.con.print(f"[yellow]warning:[/] {w}", highlight=False)
        if info.get("dp"):
            self.con.print("DP-SGD: every discriminator trains on Poisson batches with per-sample clipping and noise; "
                           "each client's epsilon is charged in DIR/privacy/ and shown per round", highlight=False)
        if info.get("privacy_stop"):
            self.con.print(f"[yellow]stopped before round {info['start_round'] + 1}:[/] {info['privacy_stop']}",
                           highlight=False)
        self.bar.update(self.task, completed=info["start_round"],
                        info=f"{len(info['clients'])} clients" + (f": {', '.join(info['clients'])}"
                                                                  if len(info["clients"]) <= 8 else ""))

    def on_step(self, s: dict) -> None:
        if self.task is not None:
            self.bar.update(self.step_task, completed=(s["round"] - 1) * self.steps // self.rounds + s["step"])

    def on_round(self, m: dict) -> None:
        if m.get("plan_switch"):
            w = m["plan_switch"]
            self.con.print(f"[yellow]round {w['round']}: switching to {w['plan']}[/]: predicted round "
                           f"{w['old_round_s']:.2f} -> {w['new_round_s']:.2f} s per step ({w['why']})",
                           highlight=False)
        if m.get("aggregation_skipped"):
            self.con.print(f"[yellow]round {m['round']}:[/] {m['aggregation_skipped']}", highlight=False)
        fid = f", FID {m['fid']:.1f}" if m.get("fid") is not None else ""
        g = f"G {m['g_loss']:.3f}" if m.get("g_loss") is not None else "G -"
        self.bar.update(self.task, completed=m["round"], info=f"{g}{fid}, {m['round_time_s']:.1f} s/round")


def render_summary(history: list[dict], out_dir: Path, out: Console) -> None:
    """Last round per device: predicted against measured compute, bytes moved."""
    if not history:
        return
    last = history[-1]
    render_last_round(last, out)
    out.print(f"wrote {out_dir}/plan.txt, metrics.jsonl, samples/round_{last['round']:04d}.png, losses.png, times.png, "
              "checkpoint/" + (", config.toml" if (Path(out_dir) / "config.toml").is_file() else "")
              + (", tensorboard/" if (Path(out_dir) / "tensorboard").is_dir() else ""))


def render_last_round(last: dict, out: Console) -> None:
    """A round's row of metrics.jsonl: per device measured against predicted, client step
    times, privacy, quality."""
    t = Table(title=f"round {last['round']}: measured against the plan (per step)", title_justify="left")
    for col in ("client", "device", "predicted s", "measured s", "error", "sent", "received"):
        t.add_column(col, justify="left" if col in ("client", "device") else "right")
    flat_out = False
    for name, d in last["devices"].items():
        predicted = d["predicted_compute_s"]
        if not d.get("emulated", True):  # --emulate none: this machine's speed, not the device's
            predicted, flat_out = predicted / d.get("processing_time_factor", 1.0), True
        err_pct = (d["compute_s"] - predicted) / predicted if predicted else 0
        t.add_row(d["client"], name, f"{predicted:.3f}", f"{d['compute_s']:.3f}", f"{err_pct:+.0%}",
                  format_bytes(d["bytes_sent"]), format_bytes(d["bytes_received"]))
    if flat_out:
        t.caption = "--emulate none: predictions are for this machine (the plan's compute / processing_time_factor)"
        t.caption_justify = "left"
    out.print(t)
    steps = ", ".join(f"{c}: {v['step_time_s']:.2f} s (plan {v['predicted_step_time_s']:.2f} s"
                      + (f", {v['host_wait_s']:.2f} s of it waiting for this machine's cores)"
                         if v.get("host_wait_s") else ")")
                      + (f", dropped at step {v['dropped_at_step']}" if v["dropped_at_step"] is not None else "")
                      for c, v in last["clients"].items())
    out.print(f"client step times: {steps}")
    eps = {c: v for c, v in last["clients"].items() if "epsilon" in v}
    if eps:
        out.print("privacy (DP-SGD): " + ", ".join(
            f"{c} epsilon {v['epsilon']:.3g} at delta {v['delta']:.2g} after {v['dp_steps']} steps "
            f"(q {v['dp_q']:.3g}, noise {v['dp_noise']:.3g}, clip {v['dp_clip']:g})" for c, v in eps.items()))
    if last.get("privacy_stop"):
        out.print(f"[yellow]stopped:[/] {last['privacy_stop']}", highlight=False)
    quality = ", ".join(f"{k} {last[k]:.3g}" for k in ("fid", "kid", "confidence", "fid_inception")
                        if last.get(k) is not None)
    if last.get("classifier_accuracy") is not None:  # how far the classifier's features can be trusted
        quality += (f" (classifier right on {last['classifier_accuracy']:.0%} of "
                    f"{last['classifier_test_images']} held-out images)")
    if quality:
        out.print(f"quality: {quality}")
