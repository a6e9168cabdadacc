"""What ``fsl calibrate`` measured, as a person reads it: per device its step against the
factor its profile gives it, per link its bandwidth and latency."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from planner.devices import Profile
from planner.profile import ModelProfile


def render_calibration(result: dict, profile: Profile, host: ModelProfile | None, con: Console) -> None:
    """``host``: this machine's profile of the same model and batch size, to compare with."""
    t = Table(title=f"Calibration: one GAN training step of {host.model if host else 'the model'} at batch "
                    f"{host.batch_size if host else '?'}, on each device", title_justify="left")
    for col in ("device", "host", "emulated", "step s", "x this machine", "factor", "overhead ms", "measuring s"):
        t.add_column(col, justify="left" if col in ("device", "host", "emulated") else "right")
    for c in profile.clients:
        for d in c.devices:
            e = result["calibrations"].get(d.name)
            if e is None:
                continue
            step = sum(x["time_s"] for x in e["layers"])
            ratio = f"{step / host.step_time_s:.2f}" if host else "-"
            t.add_row(d.name, e["host"], "sleep" if e["emulate"] == "sleep" else "no", f"{step:.4f}", ratio,
                      f"{d.processing_time_factor:g}", f"{e['overhead_s'] * 1e3:.3f}", f"{e['seconds']:.1f}")
    if host:
        t.caption = (f"x this machine: the step against this machine's profile ({host.host}, {host.threads} threads, "
                     f"{host.step_time_s:.4f} s); under --emulate sleep it estimates the factor")
        t.caption_justify = "left"
    con.print(t)
    fits = [(c, x["a"], x["b"], x) for c, xs in result["links"].items() for x in xs]
    fits += [("(server)", "server", d, x) for d, x in result["server_links"].items()]
    if not fits:
        return
    t = Table(title="Links, measured over the dist transport (probe and ack; latency = intercept, "
                    "bandwidth = 1 / slope)", title_justify="left")
    for col in ("client", "a", "b", "Mbps", "intercept ms", "probes", "worst fit ms"):
        t.add_column(col, justify="left" if col in ("client", "a", "b") else "right")
    for client, a, b, x in fits:
        sizes = f"{min(x['sizes']) // 1024}-{max(x['sizes']) // 1024} KiB"
        t.add_row(client, a, b, f"{x['bytes_per_s'] * 8 / 1e6:,.1f}", f"{x['intercept_s'] * 1e3:.3f}", sizes,
                  f"{x['residual_s'] * 1e3:.3f}")
    con.print(t)
