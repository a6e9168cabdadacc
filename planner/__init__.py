"""Planner: where each segment of each client's discriminator runs, and how.

``plan(model, profile)`` profiles the model per layer (``planner.profile``), groups
layers into units at the legal cuts of the layer graph (``planner.graph``,
``planner.costs``), builds each client's cost tables with the execution options the
caller allows (micro-batches, recomputation, cut codecs: SPEC §2.1) and solves them with
the chosen solver (``planner.ilp`` by default, proven optimal; ``planner.baselines``
for comparison). The result is a :class:`~planner.planfile.Plan` (SPEC §2, §2.1).

The orchestration lives in :mod:`planner.planning`; many clients are solved in worker
processes, each distinct problem once (:mod:`planner.fleet`); one client's solve is
:mod:`planner.solve`. This facade re-exports what callers use.
"""

from planner.errors import InputError, NoFeasiblePlan
from planner.planning import MAX_DEFAULT_MICRO_BATCHES, client_result, options_for, plan
from planner.solve import SOLVERS, overall_status, solve_client

__all__ = ["plan", "solve_client", "client_result", "options_for", "overall_status", "SOLVERS", "InputError",
           "NoFeasiblePlan", "MAX_DEFAULT_MICRO_BATCHES"]
