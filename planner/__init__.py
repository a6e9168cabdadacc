"""Planner: where each segment of each client's discriminator runs, and how.

``plan(model, profile)`` profiles the model per layer (``planner.profile``), groups
layers into units at the legal cuts of the layer graph (``planner.graph``,
``planner.costs``), builds each client's cost tables with the execution options the
caller allows (micro-batches, recomputation, cut codecs: SPEC §2.1) and solves them with
the chosen solver (``planner.ilp`` by default, proven optimal; ``planner.baselines``
for comparison). The result is a :class:`~planner.planfile.Plan` (SPEC §2, §2.1).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, replace

from planner import check
from planner.calibration import check_calibrations
from planner.codecs import CODECS
from planner.costs import (Options, Unit, client_problem, client_times, planning_units, profile_problems,
                           with_micro_batch_tables)
from planner.devices import Profile
from planner.errors import InputError, NoFeasiblePlan
from planner.ga import GASettings
from planner.models import SEED_PARTS, LayeredModel
from planner.planfile import Plan, PlannedClient, PlannedStage, round_time_s
from planner.problem import ClientProblem, Solution
from planner.profile import ModelProfile
from planner.profile_cache import micro_batch_profile, profile_model
from planner.usermodel import model_record

SOLVERS = ("ilp", "fsl-gan", "uniform", "params", "reference", "ga")

__all__ = ["plan", "solve_client", "client_result", "options_for", "overall_status", "SOLVERS", "InputError", "NoFeasiblePlan"]
MAX_DEFAULT_MICRO_BATCHES = 16  # throughput's default choices: the divisors of the batch up to this


def options_for(objective: str, batch_size: int, *, micro_batches: tuple[int, ...] | None = None,
                codecs: tuple[str, ...] = (), recompute: bool = True) -> Options:
    """The execution options a plan may use, checked (SPEC §2.1). ``micro_batches``
    None: 1 for latency, the divisors of ``batch_size`` up to 16 for throughput;
    ``codecs``: those a cut may use besides "none"."""
    if micro_batches is None:
        micro_batches = (1,) if objective == "latency" else tuple(
            m for m in range(1, MAX_DEFAULT_MICRO_BATCHES + 1) if batch_size % m == 0)
    if not micro_batches:
        raise InputError("--micro-batches", None, "no value given, expected e.g. 1,2,4,8")
    bad = [m for m in micro_batches if m < 1 or batch_size % m]
    if bad:
        raise InputError("--micro-batches", None, f"{bad[0]} does not divide the batch size {batch_size}")
    if objective == "latency" and set(micro_batches) != {1}:
        raise InputError("--micro-batches", None, "latency runs one micro-batch; use --objective throughput")
    unknown = [c for c in codecs if c not in CODECS]
    if unknown:
        raise InputError("--codecs", None, f"unknown codec {unknown[0]!r}, expected none, {', '.join(CODECS)}")
    return Options(tuple(sorted(set(micro_batches))), tuple(c for c in CODECS if c in codecs), recompute)


def solve_client(p: ClientProblem, *, solver: str = "ilp", objective: str = "latency",
                 time_limit_s: float | None = None, parts: tuple[int, ...] | None = None,
                 ga: GASettings | None = None) -> Solution:
    """Solve one client's tables with the named solver (``ga``: the GA's settings)."""
    from planner import baselines, ga as genetic, ilp, reference

    if solver == "ilp":
        return ilp.solve_ilp(p, objective=objective, time_limit_s=time_limit_s)
    if solver == "reference":
        return reference.solve_reference(p, objective=objective)
    if solver == "fsl-gan":
        return baselines.solve_fsl_gan(p, parts=parts, objective=objective)
    if solver == "uniform":
        return baselines.solve_uniform(p, objective=objective)
    if solver == "params":
        return baselines.solve_params(p, objective=objective)
    if solver == "ga":
        return genetic.solve_ga(p, objective=objective, settings=ga, time_limit_s=time_limit_s)
    raise InputError("--solver", None, f"unknown solver {solver!r}, expected one of {', '.join(SOLVERS)}")


def _seed_parts(model: LayeredModel, units: list[Unit]) -> tuple[int, ...] | None:
    """The seed's A/B/C boundaries as unit indices, where the model has them."""
    layers = SEED_PARTS.get(model.model_name)
    if layers is None:
        return None
    starts = {u.first: i for i, u in enumerate(units)}
    return tuple(starts[x] for x in layers if x in starts)


def client_result(name: str, p: ClientProblem, sol: Solution, *, solver: str, objective: str, data_weight: float,
                  processing_time_factor: dict[str, float], layer_names: list[str],
                  alternatives: tuple[tuple[str, ClientProblem], ...] = (),
                  time_source: dict[str, str] | None = None) -> PlannedClient:
    """A solved client as the plan records it: its stages, or its exclusion and why
    (``alternatives``: ``(option hint, tables)`` that may fit where ``p`` does not;
    ``time_source``: per device, whether its times are its calibration or its factor)."""
    time_source = dict(time_source or {})
    if not sol.stages:
        from planner.explain import explain_infeasible

        if sol.status == "time_limit":  # explaining would mean solving without the limit
            reason = ("not solved within the time limit (--time-limit): the solver found no plan "
                      "and ruled none out")
        else:
            reason = explain_infeasible(p, objective=objective, layer_names=layer_names, solver=solver,
                                        alternatives=alternatives)
        return PlannedClient(name=name, status="excluded", reason=reason, step_time_s=None, stages=(), costs=p,
                             data_weight=data_weight, solver_status=sol.status,
                             processing_time_factor=processing_time_factor, time_source=time_source)
    mine = p.at(sol.micro_batches)  # the tables of the chosen M
    transfers = check.cut_transfer_s(mine, sol.stages) + [0.0]
    stages = tuple(
        PlannedStage(device=p.devices[s.device], start=s.start, end=s.end, compute_s=check.stage_compute_s(mine, s),
                     transfer_s=t, memory_bytes=check.stage_memory_bytes(p, s), recompute=s.recompute, codec=s.codec)
        for s, t in zip(sol.stages, transfers))
    return PlannedClient(name=name, status="planned", reason=None,
                         step_time_s=check.step_time_s(p, sol.stages, sol.micro_batches),
                         stages=stages, costs=p, data_weight=data_weight, solver_status=sol.status,
                         processing_time_factor=processing_time_factor, micro_batches=sol.micro_batches,
                         time_source=time_source)


def _with_baselines(c: PlannedClient, objective: str, parts: tuple[int, ...] | None) -> PlannedClient:
    out = {}
    for name in ("fsl-gan", "uniform", "params"):
        sol = solve_client(replace(c.costs, budget_s=None), solver=name, objective=objective, parts=parts)
        out[name] = None if not sol.stages else round(sol.step_time_s, 6)
    return replace(c, baselines_step_time_s=out)


def overall_status(statuses: list[str]) -> str:
    """``optimal`` only when every client's solve, planned or excluded, was proven."""
    if "heuristic" in statuses:
        return "heuristic"
    if "feasible" in statuses or "time_limit" in statuses:
        return "feasible"
    return "optimal"


def _alternatives(client, units: list[Unit], model_profile: ModelProfile, budget_s: float | None,
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


def plan(model: LayeredModel, devices: Profile, *, batch_size: int = 64, solver: str = "ilp",
         objective: str = "latency", time_limit_s: float | None = None,
         devices_file: str | None = None, model_profile: ModelProfile | None = None,
         compare: bool = True, progress: Callable[[str, int, int], None] | None = None,
         micro_batches: tuple[int, ...] | None = None, codecs: tuple[str, ...] = (), recompute: bool = True,
         ga: GASettings | None = None, measure_micro_batches: bool | None = None) -> Plan:
    """Plan every client of ``devices`` for ``model``; raises NoFeasiblePlan if none fits.

    ``micro_batches``, ``codecs`` and ``recompute`` are the execution options a plan may
    use (:func:`options_for`). ``compare`` also records, per client, the step time each
    baseline solver would predict on the same tables, budget ignored
    (``baselines_step_time_s``), so a plan shows its gain.

    ``progress(stage, done, total)`` is called while profiling and solving. ``ga``: the
    settings of ``solver="ga"`` (recorded in the plan's ``solver.ga``).

    ``measure_micro_batches``: solve each allowed ``M`` on tables measured at its
    micro-batch size (:func:`planner.profile_cache.micro_batch_profile`; the plan keeps every
    ``M``'s tables in ``costs.per_micro_batch``, SPEC §2.1). Default: when
    ``plan`` profiles the model itself; a caller that hands in ``model_profile`` gets every
    ``M`` solved together on that profile's tables (``C / M``) unless it asks.
    """
    if solver not in SOLVERS:
        raise InputError("--solver", None, f"unknown solver {solver!r}, expected one of {', '.join(SOLVERS)}")
    opts = options_for(objective, batch_size, micro_batches=micro_batches, codecs=codecs, recompute=recompute)
    if measure_micro_batches is None:
        measure_micro_batches = model_profile is None
    if model_profile is None:
        model_profile = profile_model(model, batch_size=batch_size,
                                      progress=(lambda d, t: progress("profile", d, t)) if progress else None)
    check_calibrations([(f"clients[{ci}].devices[{di}].calibration", d.calibration)
                        for ci, c in enumerate(devices.clients) for di, d in enumerate(c.devices)],
                       model_profile, codecs=CODECS, source=devices_file or "<profile>")
    units = planning_units(model, model_profile)
    parts = _seed_parts(model, units)
    problems = profile_problems(devices, units, model_profile, opts)
    # Each M's tables are measured at its micro-batch size (profile_cache.micro_batch_profile)
    # and kept in the plan (SPEC §2.1 per_micro_batch); the solver picks M over them.
    if measure_micro_batches and opts.micro_batch_choices != (1,):
        per_m = {}
        for m in opts.micro_batch_choices:
            mp = micro_batch_profile(model, model_profile, m, progress=(lambda d, t: progress("profile", d, t))
                                     if progress else None)
            per_m[m] = profile_problems(devices, units if mp is model_profile else planning_units(model, mp), mp,
                                        replace(opts, micro_batch_choices=(m,)))
        problems = [with_micro_batch_tables(p, {m: ps[i] for m, ps in per_m.items()}) for i, p in enumerate(problems)]
    t0 = time.perf_counter()
    unique = list(dict.fromkeys(problems))  # identical tables are solved once
    solved: dict[ClientProblem, Solution] = {}
    # CBC runs as a child process, so threads solve clients on every core at once.
    with ThreadPoolExecutor(max_workers=max(1, min(os.cpu_count() or 1, len(unique)))) as pool:
        futures = {pool.submit(solve_client, p, solver=solver, objective=objective, time_limit_s=time_limit_s,
                               parts=parts, ga=ga): p for p in unique}
        for done, fut in enumerate(as_completed(futures), 1):
            solved[futures[fut]] = fut.result()
            if progress:
                progress("solve", done, len(unique))
    clients = [
        client_result(client.name, p, solved[p], solver=solver, objective=objective, data_weight=client.data_weight,
                      processing_time_factor={d.name: d.processing_time_factor for d in client.devices},
                      layer_names=[u.name for u in units],
                      time_source={d.name: t.source for d, t in zip(client.devices, client_times(client, units, model_profile))},
                      alternatives=() if solved[p].stages else _alternatives(
                          client, units, model_profile, p.budget_s, opts, objective))
        for client, p in zip(devices.clients, problems)
    ]
    if compare and solver == "ilp":
        clients = [_with_baselines(c, objective, parts) for c in clients]
    seconds = time.perf_counter() - t0
    planned = [c for c in clients if c.status == "planned"]
    if not planned:
        raise NoFeasiblePlan({c.name: c.reason or "" for c in clients})
    layers = [
        {"name": u.name, "flops": u.flops, "param_bytes": u.param_bytes, "output_bytes": u.output_bytes,
         "params": u.params, "memory_bytes": u.memory_bytes, "time_s": u.time_s,
         "model_layers": [u.first, u.last + 1]}
        for u in units
    ]
    server = {"step_s": model_profile.generator_step_s}
    return Plan(
        model={"name": model.model_name, "fingerprint": model.fingerprint(), **model_record(model),
               "input_shape": list(model.input_shape), "layers": layers,
               "profiled_on": {"host": model_profile.host, "torch": model_profile.torch_version,
                               "threads": model_profile.threads}},
        batch_size=batch_size, objective=objective,
        solver={"name": solver, "status": overall_status([c.solver_status for c in clients]),
                "seconds": round(seconds, 4), "time_limit_s": time_limit_s,
                **({"ga": asdict(ga or GASettings())} if solver == "ga" else {})},
        devices_file=devices_file,
        round_time_s=round_time_s(clients, server),
        clients=tuple(clients),
        server=server,
    )
