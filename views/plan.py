"""Plans as a person reads them: rich tables for ``fsl plan`` / ``fsl show`` and the plan's
text table beside a plan or a run, and the parsing of ``fsl plan``'s option values.

Past :data:`SUMMARY_FROM_CLIENTS` clients (a fleet) the tables give way to a summary:
totals, the slowest planned clients, the exclusions counted by kind; ``fsl show PLAN
--client NAME`` shows one client's tables.

Per planned client: its step against the budget, ``M`` and the per-micro-batch
bottleneck (which stage or link, how long), then one row per stage: device, layers,
where its times come from (its calibration, or its factor x the host's profile),
compute and per-micro-batch overhead, the cut to the next stage (seconds per step and
codec), whether it recomputes, memory against capacity; the caption lists the options
the plan allowed, the server transfer, unused devices and the baselines.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Optional

from rich.console import Console
from rich.table import Table

from planner.errors import InputError
from planner.explain import format_bytes


def _bar(fraction: float, width: int = 10) -> str:
    filled = min(width, max(0, round(fraction * width)))
    color = "red" if fraction > 0.9 else "yellow" if fraction > 0.6 else "green"
    return f"[{color}]{'█' * filled}[/]{'·' * (width - filled)} {fraction:5.1%}"


def _layer_span(plan, start: int, end: int) -> str:
    names = [layer["name"] for layer in plan.model["layers"]]
    return names[start] if end - start == 1 else f"{names[start]} → {names[end - 1]}"


def _client_title(c) -> str:
    p = c.costs
    budget = f"budget {p.budget_s:.2f} s" if p.budget_s is not None else "no budget"
    units = c.units_s()
    top = max(range(len(units)), key=lambda k: units[k])
    where = c.stages[top // 2].device if top % 2 == 0 else f"{c.stages[top // 2].device} → {c.stages[top // 2 + 1].device}"
    return (f"{c.name}: step {c.step_time_s:.3f} s ({budget}), M = {c.micro_batches}, bottleneck "
            f"{units[top]:.4f} s per micro-batch ({where}), data weight {c.data_weight:g}")


def _time_source(c, device: str) -> str:
    """Where a device's times come from: its calibration, or its factor x the host's profile."""
    if c.time_source.get(device) == "calibration":
        return "calibrated"
    return f"{c.processing_time_factor.get(device, 1.0):g}x host"


SUMMARY_FROM_CLIENTS = 30  # a plan of more clients is shown as a summary (fsl show --client NAME: one)
WORST_SHOWN = 10  # clients listed by the summary: the slowest planned ones
EXCLUSION_KINDS = (  # (how planner.explain's reason starts, what the summary calls it)
    ("best plan needs", "over its step budget"),
    ("first segment needs", "data device too small for the first layer"),
    ("layers need", "devices too small together"),
    ("contiguous segments", "no contiguous placement fits in memory"),
    ("no ordering", "no placement over the links that exist"),
    ("not solved within", "not solved within the time limit"),
    ("a plan fits", "the solver missed a plan that fits"),
    ("layer ", "a layer fits on no device"),
)


def _client_table(plan, c) -> Table:
    """One planned client: a row per stage, the options and baselines in the caption."""
    p = c.costs
    t = Table(title=_client_title(c), title_justify="left", show_lines=False)
    for col, just in (("#", "right"), ("device", "left"), ("layers", "left"), ("times", "left"), ("compute s", "right"),
                      ("overhead s", "right"), ("→ next s", "right"), ("codec", "left"), ("recompute", "left"),
                      ("memory / capacity", "left")):
        t.add_column(col, justify=just)
    cap = dict(zip(p.devices, p.capacity_bytes))
    for i, st in enumerate(c.stages):
        mark = " (data)" if st.device == p.devices[p.data_device] else ""
        last = i == len(c.stages) - 1
        t.add_row(str(i), st.device + mark, _layer_span(plan, st.start, st.end), _time_source(c, st.device),
                  f"{st.compute_s:.3f}",
                  "—" if p.overhead_s is None else f"{p.overhead(p.devices.index(st.device)):.4f}",
                  "—" if last else f"{st.transfer_s:.3f}",
                  "—" if last else st.codec, "yes" if st.recompute else "no",
                  f"{_bar(st.memory_bytes / cap[st.device])} of {format_bytes(cap[st.device])}")
    per_m = ", ".join(f"{m}: {t:.3f} s" for m, t in c.steps_by_micro_batches_s().items())
    notes = [f"M from {list(p.micro_batch_choices)} (these stages' step per M"
             f"{', each on its own tables' if p.per_micro_batch else ''}: {per_m})"
             if len(p.micro_batch_choices) > 1 else f"M from {list(p.micro_batch_choices)}", f"codecs allowed: {', '.join(['none', *(k.name for k in p.codecs)])}",
             "recompute " + ("allowed" if p.recompute is not None else "off")]
    if p.server_transfer_s is not None:
        notes.append(f"server transfer {p.server_transfer_s:.3f} s")
    unused = [d for d in p.devices if d not in {st.device for st in c.stages}]
    if unused:
        notes.append(f"unused: {', '.join(f'{d} ({_time_source(c, d)})' for d in unused)}")
    if c.baselines_step_time_s:
        cmp = ", ".join(f"{k} {v:.2f} s ({v / max(c.step_time_s, 1e-12):.2f}x)" if v else f"{k} no plan"
                        for k, v in c.baselines_step_time_s.items())
        notes.append(f"baselines on the same tables: {cmp}")
    t.caption, t.caption_justify = "; ".join(notes), "left"
    return t


def _excluded_table(clients, title: str = "Excluded clients") -> Table:
    t = Table(title=title, title_justify="left")
    t.add_column("client")
    t.add_column("reason")
    for c in clients:
        t.add_row(c.name, c.reason or "")
    return t


def _exclusion_kind(reason: str) -> str:
    return next((kind for start, kind in EXCLUSION_KINDS if reason.startswith(start)), "other")


def _render_summary(plan, con: Console) -> None:
    """Many clients: totals, the slowest planned clients, exclusions counted by kind."""
    planned = sorted(plan.planned, key=lambda c: -c.step_time_s)
    excluded = [c for c in plan.clients if c.status == "excluded"]
    s = plan.solver
    distinct = f"{s['distinct_problems']} distinct problems solved" if "distinct_problems" in s else "solved"
    workers = f" on {s['workers']} worker processes" if s.get("workers", 1) > 1 else ""
    con.print(f"{len(plan.clients)} clients: [bold]{len(planned)} planned[/], {len(excluded)} excluded; "
              f"{distinct}{workers} in {s['seconds']:.2f} s")
    if planned:
        steps = sorted(c.step_time_s for c in planned)
        ms = Counter(c.micro_batches for c in planned)
        con.print(f"step time of the planned clients: min {steps[0]:.3f} s, median {steps[len(steps) // 2]:.3f} s, "
                  f"max {steps[-1]:.3f} s; M chosen (M: clients) {', '.join(f'{m}: {k}' for m, k in sorted(ms.items()))}")
        t = Table(title=f"Slowest planned clients ({min(WORST_SHOWN, len(planned))} of {len(planned)})",
                  title_justify="left")
        for col, just in (("client", "left"), ("step s", "right"), ("budget s", "right"), ("M", "right"),
                          ("stages (device: layers)", "left")):
            t.add_column(col, justify=just)
        for c in planned[:WORST_SHOWN]:
            budget = "—" if c.costs.budget_s is None else f"{c.costs.budget_s:.2f}"
            stages = " → ".join(f"{st.device}: {st.end - st.start}" for st in c.stages)
            t.add_row(c.name, f"{c.step_time_s:.3f}", budget, str(c.micro_batches), stages)
        con.print(t)
    if excluded:
        kinds = Counter(_exclusion_kind(c.reason or "") for c in excluded)
        t = Table(title=f"Exclusions ({len(excluded)})", title_justify="left")
        for col, just in (("why", "left"), ("clients", "right"), ("for example", "left")):
            t.add_column(col, justify=just)
        for kind, n in kinds.most_common():
            eg = next(c for c in excluded if _exclusion_kind(c.reason or "") == kind)
            t.add_row(kind, str(n), f"{eg.name}: {eg.reason}")
        con.print(t)
    con.print("one client's tables: fsl show PLAN --client NAME", highlight=False)


def find_client(plan, name: str, source: str):
    """The client called ``name``; InputError (exit 2) naming the plan when there is none."""
    c = next((c for c in plan.clients if c.name == name), None)
    if c is None:
        names = [c.name for c in plan.clients]
        some = ", ".join(names[:3]) + (f", ... ({len(names)} in all)" if len(names) > 3 else "")
        raise InputError("--client", None, f"no client named {name!r} in {source} (its clients: {some})")
    return c


def render_plan(plan, con: Console, *, client=None) -> None:
    """The plan as rich tables on ``con``: its header, then ``client`` alone (a
    :class:`~planner.planfile.PlannedClient`), or every client's stages and the
    exclusions, or past :data:`SUMMARY_FROM_CLIENTS` clients a summary."""
    s = plan.solver
    con.print(f"[bold]Plan[/] for model [cyan]{plan.model['name']}[/] ({len(plan.model['layers'])} layers), "
              f"batch {plan.batch_size}, objective [cyan]{plan.objective}[/], devices {plan.devices_file}")
    server = f"the generator's step {plan.server['step_s']:.3f} s + " if plan.server else ""
    con.print(f"solver [cyan]{s['name']}[/]: [bold]{s['status']}[/] in {s['seconds']:.2f} s; "
              f"round time ({server}slowest planned client) [bold]{plan.round_time_s:.2f} s[/]")
    if client is not None:
        con.print(_client_table(plan, client) if client.status == "planned" else _excluded_table([client], "Excluded"))
        return
    if len(plan.clients) > SUMMARY_FROM_CLIENTS:
        _render_summary(plan, con)
        return
    for c in plan.planned:
        con.print(_client_table(plan, c))
    excluded = [c for c in plan.clients if c.status == "excluded"]
    if excluded:
        con.print(_excluded_table(excluded))


def plan_options(objective: str, micro_batches: Optional[str], codecs: str, recompute: str) -> dict:
    """The execution options of ``fsl plan``, parsed; InputError on a bad value."""
    if objective not in ("latency", "throughput"):
        raise InputError("--objective", None, f"expected latency or throughput, found {objective!r}")
    choices = None
    if micro_batches is not None:
        try:
            choices = tuple(int(v) for v in micro_batches.split(","))
        except ValueError:
            raise InputError("--micro-batches", None,
                             f"expected whole numbers separated by commas, like 1,2,4,8, found {micro_batches!r}") from None
        if min(choices) < 1:
            raise InputError("--micro-batches", None, f"each M is a number of micro-batches, at least 1; found {min(choices)}")
    if recompute not in ("auto", "off"):
        raise InputError("--recompute", None, f"expected auto or off, found {recompute!r}")
    names = tuple(v.strip() for v in codecs.split(","))
    if "" in names:
        raise InputError("--codecs", None, f"expected codec names separated by commas, like none,fp16, found {codecs!r}")
    return {"micro_batches": choices, "codecs": tuple(v for v in names if v != "none"), "recompute": recompute == "auto"}


def write_plan_table(plan, path: Path) -> None:
    """The same tables as plain text, for the run directory."""
    from planner.jsonio import write_atomic

    with open(os.devnull, "w") as sink:
        buf = Console(record=True, width=120, file=sink, color_system=None)
        render_plan(plan, buf)
    write_atomic(path, buf.export_text())


