"""One client's solve: the named solver on its tables, its best ``M``, and why it is left out.

Nothing here knows about other clients; :mod:`planner.fleet` runs these for many
clients at once and :mod:`planner.planning` turns the results into a plan.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from planner.errors import InputError
from planner.ga import GASettings
from planner.problem import ClientProblem, Solution

SOLVERS = ("ilp", "fsl-gan", "uniform", "params", "reference", "ga")
BASELINES = ("fsl-gan", "uniform", "params")  # the heuristics a plan compares itself with
TIME_LIMIT_REASON = ("not solved within the time limit (--time-limit): the solver found no plan "
                     "and ruled none out")


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


def baseline_steps_s(p: ClientProblem, *, objective: str, parts: tuple[int, ...] | None) -> dict[str, float | None]:
    """Each baseline's step on ``p`` with its budget ignored (None: it finds no placement)."""
    out = {}
    for name in BASELINES:
        sol = solve_client(replace(p, budget_s=None), solver=name, objective=objective, parts=parts)
        out[name] = None if not sol.stages else round(sol.step_time_s, 6)
    return out


def overall_status(statuses: list[str]) -> str:
    """``optimal`` only when every client's solve, planned or excluded, was proven."""
    if "heuristic" in statuses:
        return "heuristic"
    if "feasible" in statuses or "time_limit" in statuses:
        return "feasible"
    return "optimal"


def best_m(candidates: Sequence[ClientProblem], sols: Sequence[Solution], *,
           joint: ClientProblem) -> tuple[ClientProblem, Solution]:
    """A client's tables and solution for its best ``M`` (``sols[i]`` solves
    ``candidates[i]``, one candidate per allowed ``M``, each on its own tables), or, when
    none fits, the tables of every allowed ``M`` at the whole batch's times (``joint``:
    what exclusion reasons are explained on). The best is proven optimal only if every
    ``M``'s solve was."""
    unproven = any(s.status in ("feasible", "time_limit") for s in sols)
    fits = [(s.step_time_s, s.micro_batches, i) for i, s in enumerate(sols) if s.stages]
    if not fits:
        return joint, next((s for s in sols if s.status == "time_limit"), sols[0])
    *_, i = min(fits)
    best = sols[i]
    if unproven and best.status == "optimal":
        best = replace(best, status="feasible")
    return candidates[i], best


def exclusion_reason(p: ClientProblem, sol: Solution, *, objective: str, layer_names: list[str], solver: str,
                     alternatives: tuple[tuple[str, ClientProblem], ...] = ()) -> str:
    """Why ``sol`` (no stages) leaves the client out, in words (:mod:`planner.explain`)."""
    if sol.status == "time_limit":  # explaining would mean solving without the limit
        return TIME_LIMIT_REASON
    from planner.explain import explain_infeasible

    return explain_infeasible(p, objective=objective, layer_names=layer_names, solver=solver,
                              alternatives=alternatives)
