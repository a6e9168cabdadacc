"""profiles/fsl-gan-paper.json: the seed code's 6 clients x 4 devices, as docs/planning.md says.

The seed notebook (``dcsfgan_3parts.ipynb``, ``CLIENTS_CAPACITIES`` and
``CLIENT_TIME_FACTOR``) gives factors and capacities in parameters; the profile holds
16 bytes per parameter (``BYTES_PER_PARAM_TRAINING``), the data on each client's fastest
device, and 50 ms of latency on every link with a bandwidth too high to matter.
"""

from __future__ import annotations

from pathlib import Path

from planner import plan
from planner.devices import load_profile
from planner.models import dcgan_discriminator
from planner.profile import BYTES_PER_PARAM_TRAINING

PAPER = Path(__file__).parent.parent / "profiles" / "fsl-gan-paper.json"
SEED_FACTORS = [[3, 2, 2.5, 4], [7, 4, 3.5, 2.3], [1.7, 1.5, 6, 0.7], [4, 1.5, 2.34, 1], [1.67, 2, 2.5, 4],
                [999, 999, 999, 999]]
SEED_PARAMS = [[1e5, 2e7, 3e7, 9e7], [1e5, 2e7, 3e7, 9e7], [6e5, 1e7, 3e7, 9e7], [7e5, 2e7, 3e7, 9e7],
               [9e5, 2e7, 3e7, 9e7], [10, 10, 10, 10]]


def test_profile_holds_the_seed_setting():
    prof = load_profile(PAPER)
    assert [[d.processing_time_factor for d in c.devices] for c in prof.clients] == SEED_FACTORS
    assert [[d.capacity_bytes for d in c.devices] for c in prof.clients] == [
        [int(p) * BYTES_PER_PARAM_TRAINING for p in row] for row in SEED_PARAMS]
    for c, factors in zip(prof.clients, SEED_FACTORS):
        assert c.data_device.processing_time_factor == min(factors)
        assert {(d.bandwidth_mbps, d.latency_ms) for d in c.devices} == {(1e7, 50.0)}


def test_the_999x_client_is_excluded_for_capacity_the_rest_are_planned(dcgan_profile):
    result = plan(dcgan_discriminator(), load_profile(PAPER), model_profile=dcgan_profile)
    status = {c.name: c.status for c in result.clients}
    assert status == {**{f"client-{i}": "planned" for i in range(5)}, "client-5": "excluded"}
    reason = next(c.reason for c in result.clients if c.name == "client-5")
    assert "capacity 160 B" in reason and "a_conv" in reason
    # the small data device of client-4 (900k parameters, 14.4 MB) holds one layer only
    c4 = next(c for c in result.clients if c.name == "client-4")
    assert [(s.device, s.start, s.end) for s in c4.stages] == [("c4-d0", 0, 1), ("c4-d1", 1, 11)]


def test_seed_greedy_fills_the_given_order_only():
    from planner.baselines import solve_fsl_gan
    from planner.problem import Stage
    from tests.test_solvers import problem

    # data device 0 holds one layer; device 1 is the fastest helper, but the order says 2
    p = problem([[1.0] * 3, [0.1] * 3, [0.5] * 3], capacity=[1, 10, 10])
    assert solve_fsl_gan(p).stages == (Stage(0, 0, 1), Stage(1, 1, 3))
    assert solve_fsl_gan(p, order=[0, 2]).stages == (Stage(0, 0, 1), Stage(2, 1, 3))
    assert solve_fsl_gan(p, order=[0]).status == "infeasible"  # the seed keeps only the devices it lists
