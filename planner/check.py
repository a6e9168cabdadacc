"""An independent check of a plan against SPEC §2 and §2.1, built only on the cost tables.

Used by the solvers' tests, by ``fsl show`` and by the trainer when it loads a plan.

The step of a client with stages ``k = 0..S-1`` runs ``M`` micro-batches through a line
of units (GPipe fill-drain): each stage is a unit of ``C_k / M + overhead_s[d_k]``, each
cut a unit of ``V_k / M + lat_k``. ``M`` identical jobs through a line of units finish
after ``sum(u) + (M - 1) * max(u)`` (the first job's path, then one bottleneck interval
per further job)::

    stage 0  |m0|m1|m2|
    cut 0       |m0|m1|m2|
    stage 1        |m0 |m1 |m2 |        step = sum(u) + (M-1) * u(stage 1)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from planner.problem import NO_CODEC, ClientProblem, Stage

RTOL = 1e-9  # the tolerance on capacity and budget comparisons of float sums


def stage_compute_s(p: ClientProblem, s: Stage) -> float:
    """``C_k``: the stage's compute per step, from the table its ``recompute`` flag selects."""
    table = p.recompute.compute_s if s.recompute and p.recompute is not None else p.compute_s
    return sum(table[s.device][s.start : s.end])


def stage_memory_bytes(p: ClientProblem, s: Stage) -> int:
    table = p.recompute.memory_bytes if s.recompute and p.recompute is not None else p.memory_bytes
    return sum(table[s.device][s.start : s.end])


def cut_transfer_s(p: ClientProblem, stages: Sequence[Stage]) -> list[float]:
    """``V_k + lat_k`` of each cut between consecutive stages (len(stages) - 1 values)."""
    return [p.transfer_s(a.device, b.device, a.end - 1, a.codec) for a, b in zip(stages, stages[1:])]


def units_s(p: ClientProblem, stages: Sequence[Stage], micro_batches: int = 1) -> list[float]:
    """Per micro-batch seconds of every unit in line order: stage 0, cut 0, stage 1, ...,
    on the tables of ``micro_batches`` (``per_micro_batch`` over the base ones)."""
    m, p = micro_batches, p.at(micro_batches)
    out = []
    for k, s in enumerate(stages):
        out.append(stage_compute_s(p, s) / m + p.overhead(s.device))
        if k + 1 < len(stages):
            nxt = stages[k + 1]
            out.append(p.cut_volume_s(s.device, nxt.device, s.end - 1, s.codec) / m
                       + p.link_latency_s[s.device][nxt.device])
    return out


def best_micro_batches(p: ClientProblem, stages: Sequence[Stage], choices: Sequence[int]) -> tuple[int, float]:
    """``(M, step_time_s)`` of the fastest of ``choices`` for ``stages``, each ``M`` on its
    own tables (the smallest such ``M`` on ties): the re-solve over ``M`` of a placement."""
    return min(((step_time_s(p, stages, m), m) for m in sorted(choices)), default=(math.inf, 1))[::-1]


def micro_batch_violation(p: ClientProblem, stages: Sequence[Stage], micro_batches: int,
                          choices: Sequence[int]) -> str | None:
    """Why ``micro_batches`` is not the best ``M`` of ``choices`` for ``stages`` on these
    tables (relative tolerance 1e-6, as SPEC's promise of optimality), or None."""
    m, best = best_micro_batches(p, stages, choices)
    mine = step_time_s(p, stages, micro_batches)
    if best < mine * (1 - 1e-6):
        return (f"micro_batches {micro_batches} takes {mine:.6g} s per step on its own tables, "
                f"M = {m} takes {best:.6g} s with the same stages")
    return None


def pipeline_s(units: Sequence[float], micro_batches: int) -> float:
    """The makespan of ``micro_batches`` identical jobs through ``units`` in line."""
    return sum(units) + (micro_batches - 1) * max(units, default=0.0)


def step_time_s(p: ClientProblem, stages: Sequence[Stage], micro_batches: int = 1) -> float:
    """``step_time_s`` of SPEC §2.1: ``sum(u) + (M - 1) * max(u)``.

    With ``M = 1`` and no overheads it is §2's latency formula: every stage's compute
    plus every cut's transfer. The objective only restricts ``M`` (latency: 1).
    """
    return pipeline_s(units_s(p, stages, micro_batches), micro_batches)


def violations(p: ClientProblem, stages: Sequence[Stage], micro_batches: int = 1) -> list[str]:
    """Every way ``stages`` (with ``micro_batches``) break SPEC §2/§2.1's feasibility rules.

    The budget counts too: a plan whose step time exceeds ``p.budget_s`` is not feasible.
    """
    out: list[str] = []
    if not stages:
        return ["no stages"]
    if micro_batches not in p.micro_batch_choices:
        out.append(f"micro_batches {micro_batches} is not one of micro_batch_choices {list(p.micro_batch_choices)}")
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
        if s.recompute and p.recompute is None:
            out.append(f"stage on {p.devices[s.device]} recomputes, but costs have no recompute tables")
        if s.codec != NO_CODEC and p.codec(s.codec) is None:
            out.append(f"stage on {p.devices[s.device]} sends with codec {s.codec!r}, not in costs.codecs")
    if stages[-1].codec != NO_CODEC:
        out.append(f"the last stage sends nothing, its codec must be 'none', found {stages[-1].codec!r}")
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
        t = step_time_s(p, stages, micro_batches)
        if t > p.budget_s * (1 + RTOL):
            out.append(f"step time {t:.6g} s exceeds budget {p.budget_s:.6g} s")
    return out
