"""Many clients at once: their tables built, each distinct problem solved once, in worker processes.

Clients are independent problems. :func:`solve_fleet` makes three passes, over a pool of
worker processes (or in this process when one worker is asked for, or few clients):

1. **tables**: each client's cost tables (``planner.costs``; one set per allowed ``M``
   when each ``M`` is measured at its micro-batch size) and where each device's times
   come from;
2. **solve**: one solve per *distinct* problem. Two clients whose tables are equal once
   their device names are set aside (a chain's identical clinics, a vendor's bundle) are
   the same problem: its solution names devices by index, so it holds for both, and so
   do the baselines' steps. The key is the tables themselves (a dict of frozen
   dataclasses: hashed, then compared in full), so only equal tables share a solve;
3. **explain**: each excluded client's reason, on its own tables (a reason names devices).

Workers are forked from this process (spawned where fork is missing) and get the shared
inputs once, through the pool's initializer; work goes out in chunks. Results come back
in client order, so a plan does not depend on the number of workers.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, replace

from planner.calibration import CALIBRATED, FACTOR, matching
from planner.codecs import CODECS
from planner.costs import Options, Unit, client_problem, with_micro_batch_tables
from planner.devices import Client
from planner.ga import GASettings
from planner.problem import ClientProblem, Solution
from planner.profile import ModelProfile
from planner.solve import baseline_steps_s, best_m, exclusion_reason, solve_client

MAX_WORKERS = 8  # worker processes at most, whatever the machine has
PARALLEL_FROM_CLIENTS = 8  # fewer clients are solved in this process (a pool costs more than it saves)
CHUNKS_PER_WORKER = 16  # work is sent in about this many chunks per worker


@dataclass(frozen=True)
class FleetInputs:
    """Everything a worker needs, sent once."""

    clients: tuple[Client, ...]
    budgets_s: tuple[float | None, ...]  # [client] its step budget
    units: tuple[Unit, ...]  # the planning units at the whole batch
    model_profile: ModelProfile  # the whole batch's profile
    per_m: tuple[tuple[int, tuple[Unit, ...], ModelProfile], ...]  # (M, units, profile) measured per M; () none
    options: Options
    solver: str = "ilp"
    objective: str = "latency"
    time_limit_s: float | None = None
    parts: tuple[int, ...] | None = None  # the seed's A/B/C boundaries (fsl-gan baseline)
    ga: GASettings | None = None
    compare: bool = True  # also each baseline's step on the chosen tables

    @property
    def layer_names(self) -> list[str]:
        return [u.name for u in self.units]


@dataclass(frozen=True)
class ClientOutcome:
    """One client as solved: its tables, its best ``M``'s solution, and why it is left out."""

    tables: ClientProblem  # the chosen M's tables, or the joint tables when excluded
    solution: Solution
    candidates: tuple[ClientProblem, ...]  # per allowed M measured apart, else the joint tables alone
    candidate_solutions: tuple[Solution, ...]
    time_source: dict[str, str]  # device -> "calibration" | "factor"
    baselines_step_time_s: dict[str, float | None]
    reason: str | None  # excluded: why


@dataclass(frozen=True)
class FleetResult:
    outcomes: tuple[ClientOutcome, ...]  # in client order
    distinct_problems: int  # solves run: clients with equal tables share one
    workers: int  # processes that solved (1: this one)


_INPUTS: FleetInputs | None = None  # a worker's copy of the shared inputs


def _init(inputs: FleetInputs | None) -> None:
    global _INPUTS
    _INPUTS = inputs


def _tables(i: int) -> tuple[ClientProblem, tuple[ClientProblem, ...], dict[str, str]]:
    """Pass 1: client ``i``'s joint tables, its per-M candidates and its time sources."""
    f = _INPUTS
    client, budget = f.clients[i], f.budgets_s[i]
    joint = client_problem(client, list(f.units), f.model_profile, budget_s=budget, options=f.options)
    if f.per_m:  # every M's tables in one problem (SPEC §2.1 per_micro_batch): the solver picks M over them
        joint = with_micro_batch_tables(joint, {m: client_problem(client, list(units), mp, budget_s=budget,
                                                                  options=replace(f.options, micro_batch_choices=(m,)))
                                                for m, units, mp in f.per_m})
    candidates = (joint,)
    sources = {d.name: FACTOR if matching(d.calibration, f.model_profile, d.processing_time_factor) is None
               else CALIBRATED for d in client.devices}  # as client_times says
    return joint, candidates, sources


def _solve(key: tuple[ClientProblem, tuple[ClientProblem, ...]]) -> tuple[tuple[Solution, ...], dict]:
    """Pass 2: one distinct problem's solutions per candidate, and the baselines on the chosen tables."""
    f = _INPUTS
    joint, candidates = key
    sols = tuple(solve_client(p, solver=f.solver, objective=f.objective, time_limit_s=f.time_limit_s,
                              parts=f.parts, ga=f.ga) for p in candidates)
    chosen, _ = best_m(candidates, sols, joint=joint)
    compare = f.compare and f.solver == "ilp"
    return sols, baseline_steps_s(chosen, objective=f.objective, parts=f.parts) if compare else {}


def _explain(job: tuple[int, ClientProblem, Solution]) -> str:
    """Pass 3: why client ``i`` is left out, with the options the caller left out tried."""
    f = _INPUTS
    i, p, sol = job
    alternatives = () if sol.status == "time_limit" else alternative_tables(
        f.clients[i], list(f.units), f.model_profile, p.budget_s, f.options, f.objective)
    return exclusion_reason(p, sol, objective=f.objective, layer_names=f.layer_names, solver=f.solver,
                            alternatives=alternatives)


def alternative_tables(client: Client, units: list[Unit], model_profile: ModelProfile, budget_s: float | None,
                       opts: Options, objective: str) -> tuple[tuple[str, ClientProblem], ...]:
    """The options the caller left out that might make ``client`` fit, as ``(the command
    line options that allow them, the client's tables with them)``."""
    tries: list[tuple[str, Options]] = []
    if not opts.recompute:
        tries.append(("--recompute auto", replace(opts, recompute=True)))
    missing = [c for c in CODECS if c not in opts.codecs]
    for c in missing:
        tries.append((f"--codecs {','.join(('none', *opts.codecs, c))}", replace(opts, codecs=(*opts.codecs, c))))
    larger = tuple(m for m in opts.micro_batch_choices if m > 1)
    if objective == "throughput" and larger and min(opts.micro_batch_choices) == 1:
        tries.append((f"--micro-batches {','.join(map(str, larger))}", replace(opts, micro_batch_choices=larger)))
    if len(tries) > 1:
        every = Options(larger or opts.micro_batch_choices, CODECS, True)
        flags = ["--recompute auto", f"--codecs none,{','.join(CODECS)}"]
        tries.append((" ".join(flags + ([f"--micro-batches {','.join(map(str, larger))}"] if larger else [])), every))
    return tuple((hint, client_problem(client, units, model_profile, budget_s=budget_s, options=o)) for hint, o in tries)


def nameless(p: ClientProblem) -> ClientProblem:
    """``p`` with its devices named by their index: equal for clients that differ only in names."""
    return replace(p, devices=tuple(str(i) for i in range(p.n_devices)))


def default_workers() -> int:
    """The cores this process may use, at most :data:`MAX_WORKERS`."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, MAX_WORKERS))


class _InProcess(Executor):
    """The pool's ``map`` in this process, for one worker or few clients."""

    def map(self, fn, *iterables, timeout=None, chunksize=1):
        return map(fn, *iterables)


def _pool(inputs: FleetInputs, workers: int) -> Executor:
    if workers == 1:
        _init(inputs)
        return _InProcess()
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method),
                               initializer=_init, initargs=(inputs,))


def _chunk(n: int, workers: int) -> int:
    return max(1, n // (workers * CHUNKS_PER_WORKER))


def _mapped(pool: Executor, fn, items: Sequence, workers: int, tick: Callable[[int], None] | None = None) -> list:
    out = []
    for done, r in enumerate(pool.map(fn, items, chunksize=_chunk(len(items), workers)), 1):
        out.append(r)
        if tick:
            tick(done)
    return out


def solve_fleet(inputs: FleetInputs, *, workers: int | None = None,
                progress: Callable[[str, int, int], None] | None = None, dedup: bool = True) -> FleetResult:
    """Every client of ``inputs`` solved (the module docstring's three passes).

    ``workers``: processes (default :func:`default_workers`; 1: this process);
    ``dedup`` False solves every client's tables on their own (for comparison).
    ``progress("solve", done, total)`` is called as distinct problems are solved.
    """
    n = len(inputs.clients)
    workers = default_workers() if workers is None else max(1, workers)
    workers = 1 if n < PARALLEL_FROM_CLIENTS else min(workers, n)
    try:
        with _pool(inputs, workers) as pool:
            outcomes = _passes(pool, inputs, workers, progress, dedup)
    finally:
        _init(None)  # this process's copy, when it solved
    return FleetResult(*outcomes, workers)


def _passes(pool: Executor, inputs: FleetInputs, workers: int, progress, dedup: bool
            ) -> tuple[tuple[ClientOutcome, ...], int]:
    """The three passes on ``pool``: the outcomes in client order, and the solves run."""
    tables = _mapped(pool, _tables, range(len(inputs.clients)), workers)
    keys = [(nameless(joint), tuple(map(nameless, cands))) if dedup else (joint, cands)
            for joint, cands, _ in tables]
    distinct = list(dict.fromkeys(keys)) if dedup else keys
    tick = (lambda d: progress("solve", d, len(distinct))) if progress else None
    solved = _mapped(pool, _solve, distinct, workers, tick)
    by_key = dict(zip(distinct, solved)) if dedup else {}
    results = [by_key[k] for k in keys] if dedup else solved
    chosen = [best_m(cands, sols, joint=joint) for (joint, cands, _), (sols, _) in zip(tables, results)]
    left_out = [(i, p, sol) for i, (p, sol) in enumerate(chosen) if not sol.stages]
    reasons = dict(zip((i for i, _, _ in left_out), _mapped(pool, _explain, left_out, workers)))
    outcomes = tuple(
        ClientOutcome(tables=p, solution=sol, candidates=cands, candidate_solutions=sols, time_source=sources,
                      baselines_step_time_s=baselines, reason=reasons.get(i))
        for i, ((_, cands, sources), (sols, baselines), (p, sol)) in enumerate(zip(tables, results, chosen)))
    return outcomes, len(distinct)
