"""``plan()``: profile the model, build every client's tables, solve them, assemble the plan.

The orchestration behind :func:`planner.plan` (the package's docstring says what a plan
is). Profiling runs here (it measures with torch); the clients' tables, solves and
exclusion reasons run in :mod:`planner.fleet`'s worker processes, each distinct problem
solved once; the plan comes back in client order whatever the number of workers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, replace

from planner import check
from planner.calibration import check_calibrations
from planner.codecs import CODECS
from planner.costs import Options, Unit, planning_units
from planner.devices import Profile
from planner.errors import InputError, NoFeasiblePlan
from planner.fleet import FleetInputs, solve_fleet
from planner.ga import GASettings
from planner.models import SEED_PARTS, LayeredModel
from planner.planfile import Plan, PlannedClient, PlannedStage, round_time_s
from planner.problem import ClientProblem, Solution
from planner.profile import ModelProfile
from planner.profile_cache import micro_batch_profile, profile_model
from planner.solve import SOLVERS, exclusion_reason, overall_status
from planner.usermodel import model_record

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
                  time_source: dict[str, str] | None = None, reason: str | None = None) -> PlannedClient:
    """A solved client as the plan records it: its stages, or its exclusion and why
    (``reason``, or explained here on ``p`` with ``alternatives``: ``(option hint, tables)``
    that may fit where ``p`` does not; ``time_source``: per device, whether its times are
    its calibration or its factor)."""
    time_source = dict(time_source or {})
    if not sol.stages:
        if reason is None:
            reason = exclusion_reason(p, sol, objective=objective, layer_names=layer_names, solver=solver,
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


def plan(model: LayeredModel, devices: Profile, *, batch_size: int = 64, solver: str = "ilp",
         objective: str = "latency", time_limit_s: float | None = None,
         devices_file: str | None = None, model_profile: ModelProfile | None = None,
         compare: bool = True, progress: Callable[[str, int, int], None] | None = None,
         micro_batches: tuple[int, ...] | None = None, codecs: tuple[str, ...] = (), recompute: bool = True,
         ga: GASettings | None = None, measure_micro_batches: bool | None = None,
         workers: int | None = None, dedup: bool = True) -> Plan:
    """Plan every client of ``devices`` for ``model``; raises NoFeasiblePlan if none fits.

    ``micro_batches``, ``codecs`` and ``recompute`` are the execution options a plan may
    use (:func:`options_for`). ``compare`` also records, per client, the step time each
    baseline solver would predict on the same tables, budget ignored
    (``baselines_step_time_s``), so a plan shows its gain.

    ``progress(stage, done, total)`` is called while profiling and solving. ``ga``: the
    settings of ``solver="ga"`` (recorded in the plan's ``solver.ga``).

    ``measure_micro_batches``: solve each allowed ``M`` on tables measured at its
    micro-batch size (:func:`planner.profile_cache.micro_batch_profile`; the plan keeps every
    ``M``'s tables in ``costs.per_micro_batch``, SPEC §2.1, and the solver picks ``M`` over them). Default: when
    ``plan`` profiles the model itself; a caller that hands in ``model_profile`` gets every
    ``M`` solved together on that profile's tables (``C / M``) unless it asks.

    ``workers``: processes that solve clients (:func:`planner.fleet.solve_fleet`; default
    the cores, 1: this process); ``dedup`` False solves clients with equal tables each on
    their own (the plan is the same; for comparison). The plan's ``solver`` records the
    ``distinct_problems`` solved and the ``workers``.
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
    per_m = []  # each M's tables measured at its micro-batch size (profile_cache.micro_batch_profile), kept in the plan
    if measure_micro_batches and opts.micro_batch_choices != (1,):
        for m in opts.micro_batch_choices:
            mp = micro_batch_profile(model, model_profile, m, progress=(lambda d, t: progress("profile", d, t))
                                     if progress else None)
            per_m.append((m, tuple(units if mp is model_profile else planning_units(model, mp)), mp))
    t0 = time.perf_counter()
    fleet = solve_fleet(FleetInputs(
        clients=tuple(devices.clients), budgets_s=tuple(devices.budget_s(c) for c in devices.clients),
        units=tuple(units), model_profile=model_profile, per_m=tuple(per_m), options=opts, solver=solver,
        objective=objective, time_limit_s=time_limit_s, parts=parts, ga=ga, compare=compare),
        workers=workers, progress=progress, dedup=dedup)
    clients = []
    for client, o in zip(devices.clients, fleet.outcomes):
        c = client_result(client.name, o.tables, o.solution, solver=solver, objective=objective,
                          data_weight=client.data_weight,
                          processing_time_factor={d.name: d.processing_time_factor for d in client.devices},
                          layer_names=[u.name for u in units], time_source=o.time_source, reason=o.reason)
        clients.append(replace(c, baselines_step_time_s=o.baselines_step_time_s) if o.baselines_step_time_s else c)
    seconds = time.perf_counter() - t0
    if not any(c.status == "planned" for c in clients):
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
                "distinct_problems": fleet.distinct_problems, "workers": fleet.workers,
                **({"ga": asdict(ga or GASettings())} if solver == "ga" else {})},
        devices_file=devices_file,
        round_time_s=round_time_s(clients, server),
        clients=tuple(clients),
        server=server,
    )
