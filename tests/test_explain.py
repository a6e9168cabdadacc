"""Why a client has no plan: one literal case per reason in planner.explain."""

from __future__ import annotations

from dataclasses import replace

import pytest

from planner.explain import explain_infeasible, format_bytes, format_seconds
from planner.problem import ClientProblem


def problem(compute, memory, capacity, *, budget=None, names=None, **options):
    n, L = len(compute), len(compute[0])
    link = tuple(tuple(0.0 if a == b else 1e6 for b in range(n)) for a in range(n))
    return ClientProblem(
        devices=tuple(names or (f"dev{i}" for i in range(n))), data_device=0,
        compute_s=tuple(map(tuple, compute)), memory_bytes=tuple(map(tuple, memory)),
        capacity_bytes=tuple(capacity), cut_bytes=(1000,) * (L - 1),
        link_bytes_per_s=link, link_latency_s=tuple(tuple(0.0 for _ in range(n)) for _ in range(n)),
        budget_s=budget, **options,
    )


@pytest.mark.parametrize(
    "n, text",
    [(0, "0 B"), (999, "999 B"), (1000, "1.0 kB"), (1_900_000, "1.9 MB"), (3_200_000_000, "3.2 GB")],
)
def test_format_bytes(n, text):
    assert format_bytes(n) == text


def test_format_seconds():
    assert format_seconds(7.3149) == "7.31 s"
    assert format_seconds(4) == "4.00 s"


def test_first_layer_does_not_fit_the_data_device():
    p = problem([[1, 1], [1, 1]], [[1_900_000, 10], [10, 10]], [1000, 10**9], names=("t-tag", "laptop"))
    assert explain_infeasible(p, layer_names=("conv1", "conv2")) == (
        "first segment needs at least 1.9 MB on t-tag (layer conv1), capacity 1.0 kB"
    )


def test_a_layer_fits_no_device():
    p = problem([[1, 1, 1], [1, 1, 1]], [[10, 5000, 10], [10, 6000, 10]], [1000, 2000])
    assert explain_infeasible(p) == "layer 1 needs at least 5.0 kB, the largest capacity is 2.0 kB on dev1"


def test_layers_need_more_memory_than_all_devices_offer():
    gb = 10**9
    p = problem([[1, 1, 1], [1, 1, 1]], [[gb // 2, 1.2 * gb, 1.5 * gb]] * 2, [gb // 2, 1.5 * gb])
    assert explain_infeasible(p) == "layers need 3.2 GB in all, the devices offer 2.0 GB"


def test_contiguous_segments_cover_only_a_prefix():
    # 18 bytes in all, 20 offered, but each device holds one 6-byte layer at most
    p = problem([[1, 1, 1], [1, 1, 1]], [[6, 6, 6]] * 2, [10, 10])
    assert explain_infeasible(p, layer_names=("a", "b", "c")) == (
        "contiguous segments on distinct devices hold at most layers 0..1 of 3; "
        "layer c fits on no device left after them"
    )


def test_budget_too_tight_for_latency():
    p = problem([[4.0, 3.31]], [[1, 1]], [10], budget=4.0)
    assert explain_infeasible(p) == "best plan needs 7.31 s per step, budget 4.00 s (over by 3.31 s)"


def test_budget_too_tight_for_throughput_names_the_pipelined_step():
    # dev0 runs layer 0 (4 s), dev1 layer 1 (1.5 s), the cut 1 ms; with 4 micro-batches
    # the units are 1, 0.00025 and 0.375 s: 1.37525 + 3 x 1 = 4.37525 s
    p = problem([[4.0, 3.0], [2.0, 1.5]], [[1, 1]] * 2, [10, 10], budget=2.0, micro_batch_choices=(1, 4))
    assert explain_infeasible(p, objective="throughput") == (
        "best plan needs 4.38 s per step, budget 2.00 s (over by 2.38 s)"
    )


def test_first_layer_fits_only_when_recomputed():
    from planner.problem import RecomputeTables

    plain = problem([[1, 1], [1, 1]], [[1_900_000, 10], [10, 10]], [1_000_000, 10**9], names=("tag", "laptop"))
    recomputing = replace(plain, recompute=RecomputeTables(((1.5, 1.5), (1.5, 1.5)), ((900_000, 5), (5, 5))))
    assert explain_infeasible(plain, alternatives=[("--recompute auto", recomputing)]) == (
        "first segment needs at least 1.9 MB on tag (layer 0), capacity 1.0 MB; "
        "fits with --recompute auto (2.50 s per step)"  # layer 0 recomputed on tag (1.5 s), the cut, 1 s
    )
    assert explain_infeasible(plain) == "first segment needs at least 1.9 MB on tag (layer 0), capacity 1.0 MB"


def test_a_codec_that_would_fit_the_budget_is_named():
    from planner.problem import Codec

    # 1 s per layer on each device; the 1000-byte cut takes 1 s raw, 0.25 + 0.02 s in int8
    p = problem([[1.0, 9.0], [9.0, 1.0]], [[1, 1]] * 2, [10, 10], budget=2.5)
    with_int8 = replace(p, codecs=(Codec("int8", 0.25, ((0.01,), (0.01,))),))
    p_slow = replace(p, link_bytes_per_s=((0.0, 1e3), (1e3, 0.0)))
    int8_slow = replace(with_int8, link_bytes_per_s=p_slow.link_bytes_per_s)
    assert explain_infeasible(p_slow, alternatives=[("--recompute auto", p_slow), ("--codecs none,int8", int8_slow)]) == (
        "best plan needs 3.00 s per step, budget 2.50 s (over by 0.50 s); fits with --codecs none,int8 (2.27 s per step)"
    )


def test_a_feasible_client_is_blamed_on_the_time_limit():
    p = problem([[1, 1]], [[1, 1]], [10])
    assert explain_infeasible(p) == (
        "a plan fits (2.00 s per step); the solver stopped on its time limit before it found one"
    )


def test_a_heuristic_that_misses_a_feasible_plan_is_blamed_not_the_time_limit():
    from planner import client_result
    from planner.problem import Solution

    p = problem([[1, 1]], [[1, 1]], [10])
    assert explain_infeasible(p, solver="uniform") == (
        "a plan fits (2.00 s per step); the uniform heuristic did not find it (--solver ilp does)"
    )
    c = client_result("c", p, Solution.infeasible(), solver="params", objective="latency", data_weight=1.0,
                      processing_time_factor={"dev0": 1.0}, layer_names=["a", "b"])
    assert (c.status, c.reason) == (
        "excluded", "a plan fits (2.00 s per step); the params heuristic did not find it (--solver ilp does)")
