"""An independent check of a plan against SPEC §2, built only on the cost tables.

Used by the solvers' tests, by ``fsl show`` and by the trainer when it loads a plan.
"""

from __future__ import annotations

from collections.abc import Sequence

from planner.problem import ClientProblem, Objective, Stage


def stage_compute_s(p: ClientProblem, s: Stage) -> float:
    return sum(p.compute_s[s.device][s.start : s.end])


def stage_memory_bytes(p: ClientProblem, s: Stage) -> int:
    return sum(p.memory_bytes[s.device][s.start : s.end])


def cut_transfer_s(p: ClientProblem, stages: Sequence[Stage]) -> list[float]:
    """Seconds of each cut between consecutive stages (len(stages) - 1 values)."""
    return [p.transfer_s(a.device, b.device, a.end - 1) for a, b in zip(stages, stages[1:])]


def step_time_s(p: ClientProblem, stages: Sequence[Stage], objective: Objective = "latency") -> float:
    """The step time SPEC §2 defines for ``objective``.

    ``latency``: stages run one after another (sequential split learning), so the step
    time is every stage's compute plus every cut's transfer.
    ``throughput``: the step is pipelined over micro-batches, so in the steady state the
    slowest stage or link bounds it: the largest of the stages' compute and the cuts'
    transfer times.
    """
    compute = [stage_compute_s(p, s) for s in stages]
    transfer = cut_transfer_s(p, stages)
    if objective == "latency":
        return sum(compute) + sum(transfer)
    if objective == "throughput":
        return max(compute + transfer)
    raise ValueError(f"unknown objective {objective!r}, expected latency or throughput")


def violations(p: ClientProblem, stages: Sequence[Stage], objective: Objective = "latency") -> list[str]:
    """Every way ``stages`` break SPEC §2's feasibility rules; empty when feasible.

    The budget counts too: a plan whose step time exceeds ``p.budget_s`` is not feasible.
    """
    out: list[str] = []
    if not stages:
        return ["no stages"]
    if stages[0].start != 0:
        out.append(f"first stage starts at layer {stages[0].start}, expected 0")
    if stages[-1].end != p.n_layers:
        out.append(f"last stage ends at layer {stages[-1].end}, expected {p.n_layers}")
    for a, b in zip(stages, stages[1:]):
        if b.start != a.end:
            out.append(f"stage on {p.devices[b.device]} starts at {b.start}, previous ends at {a.end}")
    for s in stages:
        if not 0 <= s.device < p.n_devices:
            out.append(f"stage names device index {s.device}, client has {p.n_devices}")
            return out
        if s.end <= s.start:
            out.append(f"stage on {p.devices[s.device]} is empty ({s.start}..{s.end})")
    if stages[0].device != p.data_device:
        out.append(
            f"first stage is on {p.devices[stages[0].device]}, "
            f"the data lives on {p.devices[p.data_device]}"
        )
    used = [s.device for s in stages]
    for d in sorted(set(used)):
        if used.count(d) > 1:
            out.append(f"device {p.devices[d]} holds {used.count(d)} stages, at most 1 allowed")
    for s in stages:
        need, cap = stage_memory_bytes(p, s), p.capacity_bytes[s.device]
        if need > cap:
            out.append(f"stage on {p.devices[s.device]} needs {need} bytes, capacity {cap}")
    if not out and p.budget_s is not None:
        t = step_time_s(p, stages, objective)
        if t > p.budget_s * (1 + 1e-9):
            out.append(f"step time {t:.6g} s exceeds budget {p.budget_s:.6g} s")
    return out
