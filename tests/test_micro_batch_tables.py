"""SPEC §2.1 ``per_micro_batch``: every allowed M's own tables, in the solvers, the plan
file and the checker's re-solve over M.

The hand-built client: two devices, two layers of 1 s each (per step, whole batch) on
either, a free link. At M = 2 the tables measured at half the batch say each layer
takes 2 s per step (a half batch costs as much as a whole one). By hand:

- M = 1: any plan takes 1 + 1 = 2 s.
- M = 2 on its own tables: split, units 2/2 = 1, 0, 1: 1 + 0 + 1 + (2 - 1) x 1 = 3 s;
  one stage: 4/2 = 2, 2 + 2 = 4 s. So M = 1 is best, at 2 s.
- M = 2 on the base tables divided by M (no per_micro_batch): split, 0.5 + 0.5 + 0.5 =
  1.5 s, so there M = 2 wins: the per-M tables decide.
"""

from __future__ import annotations

import copy
import json

import pytest

from planner import check
from planner.brute_force import solve_brute_force
from planner.errors import InputError
from planner.ilp import solve_ilp
from planner.planfile import Plan, PlannedClient, PlannedStage, load_plan, parse_plan, write_plan
from planner.problem import ClientProblem, Codec, MicroBatchTables, RecomputeTables, Stage
from planner.reference import solve_reference
from tests.instances import problem

SOLVERS = (solve_ilp, solve_reference, solve_brute_force)
SPLIT = (Stage(0, 0, 1), Stage(1, 1, 2))


def _client() -> ClientProblem:
    return problem([[1.0, 1.0], [1.0, 1.0]], cut=[1], bw=1e9, micro_batch_choices=(1, 2),
                   per_micro_batch=((2, MicroBatchTables(compute_s=((2.0, 2.0), (2.0, 2.0)))),))


@pytest.mark.parametrize("solve", SOLVERS)
def test_solvers_pick_m_on_each_m_own_tables(solve):
    p = _client()
    sol = solve(p, objective="throughput")
    assert (sol.micro_batches, sol.step_time_s) == (1, pytest.approx(2.0))
    assert check.step_time_s(p, SPLIT, 2) == pytest.approx(3.0)
    assert check.step_time_s(p, (Stage(0, 0, 2),), 2) == pytest.approx(4.0)
    flat = solve(ClientProblem(**{**vars(p), "per_micro_batch": ()}), objective="throughput")
    assert (flat.micro_batches, flat.step_time_s) == (2, pytest.approx(1.5))


def _plan(p: ClientProblem, stages: tuple[Stage, ...], m: int) -> Plan:
    step = check.step_time_s(p, stages, m)
    mine = p.at(m)
    transfers = check.cut_transfer_s(mine, stages) + [0.0]
    planned = tuple(PlannedStage(p.devices[s.device], s.start, s.end, check.stage_compute_s(mine, s), t,
                                 check.stage_memory_bytes(p, s)) for s, t in zip(stages, transfers))
    client = PlannedClient(name="c", status="planned", reason=None, step_time_s=step, stages=planned, costs=p,
                           micro_batches=m)
    layers = [{"name": f"l{i}", "flops": 0, "param_bytes": 0, "output_bytes": 0} for i in range(p.n_layers)]
    return Plan(model={"name": "toy", "fingerprint": "sha256:0", "input_shape": [1], "layers": layers},
                batch_size=8, objective="throughput", solver={"name": "ilp", "status": "optimal", "seconds": 0.0},
                devices_file=None, round_time_s=step, clients=(client,))


def test_checker_re_solves_m_from_the_file(tmp_path):
    p = _client()
    write_plan(_plan(p, SPLIT, 1), tmp_path / "best.json")
    assert load_plan(tmp_path / "best.json").clients[0].micro_batches == 1
    # M = 2 is self-consistent (3 s on its own tables) but not the best M for these stages
    write_plan(_plan(p, SPLIT, 2), tmp_path / "worse.json")
    with pytest.raises(InputError) as info:
        load_plan(tmp_path / "worse.json")
    assert "clients[0].micro_batches" in str(info.value) and "M = 1 takes 2 s" in str(info.value)
    assert check.best_micro_batches(p, SPLIT, (1, 2)) == (1, pytest.approx(2.0))


def _full() -> ClientProblem:
    """Every §2.1 table, with per-M replacements of each field (M = 4 leaves some out)."""
    t = ((0.5, 0.25, 0.125), (1.0, 2.0, 3.0))
    return problem([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]], micro_batch_choices=(1, 2, 4), overhead_s=(0.01, 0.02),
                   recompute=RecomputeTables(((1.5, 1.5, 1.5), (3.0, 3.0, 3.0)), ((1, 1, 1), (1, 1, 1))),
                   codecs=(Codec("fp16", 0.5, ((0.1, 0.1), (0.2, 0.2))), Codec("int8", 0.25, ((0.3, 0.3), (0.4, 0.4)))),
                   per_micro_batch=((2, MicroBatchTables(t, (0.03, 0.04), t, (("fp16", ((0.7, 0.7), (0.8, 0.8))),))),
                                    (4, MicroBatchTables(compute_s=t))))


def test_per_micro_batch_tables_survive_the_file(tmp_path):
    p = _full()
    assert ClientProblem.from_json(json.loads(json.dumps(p.to_json()))) == p
    at2, at4 = p.at(2), p.at(4)
    assert at2.compute_s == at2.recompute.compute_s == ((0.5, 0.25, 0.125), (1.0, 2.0, 3.0))
    assert at2.overhead_s == (0.03, 0.04) and at2.codec("fp16").codec_s == ((0.7, 0.7), (0.8, 0.8))
    assert at2.codec("int8") == p.codec("int8")  # absent fields keep the base's
    assert at4.overhead_s == p.overhead_s and at4.recompute == p.recompute and at4.codecs == p.codecs
    assert p.at(1) is p
    assert p.without_device(1).at(2).compute_s == ((0.5, 0.25, 0.125),)
    sol = solve_reference(p, objective="throughput")
    stages = sol.stages
    write_plan(_plan(p, stages, sol.micro_batches), tmp_path / "p.json")
    assert load_plan(tmp_path / "p.json").clients[0].costs == p
    data = json.loads((tmp_path / "p.json").read_text())
    assert set(data["clients"][0]["costs"]["per_micro_batch"]) == {"2", "4"}

    def broken(edit) -> str:
        d = copy.deepcopy(data)
        edit(d["clients"][0]["costs"]["per_micro_batch"])
        with pytest.raises(InputError) as info:
            parse_plan(d, source="p.json")
        return str(info.value)

    assert "not one of micro_batch_choices" in broken(lambda t: t.update({"8": {}}))
    assert "per_micro_batch.2.compute_s must be 2 rows of 3" in broken(lambda t: t["2"]["compute_s"].pop())
    assert "'zip' is not one of costs.codecs" in broken(lambda t: t["2"]["codecs"].update(zip={"codec_s": [[0], [0]]}))


def test_scaling_a_device_scales_every_m_tables():
    """--adapt re-solves on measured speeds: a device 2x slower is 2x slower at every M."""
    p = _full().scaled((2.0, 1.0))
    assert p.at(2).compute_s == ((1.0, 0.5, 0.25), (1.0, 2.0, 3.0))
    assert p.at(2).overhead_s == pytest.approx((0.06, 0.04)) and p.at(4).overhead_s == pytest.approx((0.02, 0.02))
    assert p.at(2).codec("fp16").codec_s == ((1.4, 1.4), (0.8, 0.8)) and p.at(2).codec("int8").codec_s[0] == (0.6, 0.6)
    assert p.at(1).recompute.compute_s == ((3.0, 3.0, 3.0), (3.0, 3.0, 3.0))
