"""--adapt: a device that slows down during the run is planned around at a round boundary
(and a small drift is not); training continues from the same weights (issue 13)."""

from __future__ import annotations

import json

import pytest
import torch

from planner import plan as make_plan
from planner.devices import parse_profile
from planner.models import dcgan_discriminator
from planner.profile import measure
from tests.helpers import final_states, run

pytestmark = pytest.mark.slow
BATCH = 8
PROFILE = {"schema": "fsl-devices/1", "clients": [{"name": "lab", "devices": [
    {"name": "phone", "processing_time_factor": 6.0, "capacity": "4GB", "bandwidth_mbps": 10000, "holds_data": True},
    {"name": "laptop", "processing_time_factor": 1.0, "capacity": "4GB", "bandwidth_mbps": 10000},
    {"name": "spare", "processing_time_factor": 3.0, "capacity": "4GB", "bandwidth_mbps": 10000}]}]}


@pytest.fixture(scope="module")
def lab_plan():
    """Planned on this machine's own measurement, so the emulated devices run as predicted."""
    model = dcgan_discriminator()
    p = make_plan(model, parse_profile(PROFILE), batch_size=BATCH, compare=False,
                  model_profile=measure(model, batch_size=BATCH, repeats=3, warmup=1))
    assert "laptop" in {s.device for s in p.planned[0].stages} and "spare" not in {s.device for s in p.planned[0].stages}
    return p


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("emulate", ["sleep", "virtual"])
def test_a_slowed_device_is_planned_around_and_the_weights_carry_on(tmp_path, lab_plan, emulate):
    run(tmp_path, lab_plan, "adapt", rounds=4, steps_per_round=3, emulate=emulate, adapt=True,
        slowdown=(("laptop", 20.0, 2),))
    rows = _rows(tmp_path / "adapt")
    assert [r["round"] for r in rows] == [1, 2, 3, 4]
    switches = [r["plan_switch"] for r in rows if r.get("plan_switch")]
    assert len(switches) == 1 and switches[0]["round"] == 2, switches
    w = switches[0]
    assert w["new_round_s"] <= 0.9 * w["old_round_s"] and "laptop" in w["why"]
    new = json.loads((tmp_path / "adapt" / w["plan"]).read_text())
    laptop_layers = lambda p: sum(s["end"] - s["start"] for s in p["clients"][0]["stages"] if s["device"] == "laptop")  # noqa: E731
    old = json.loads((tmp_path / "plan.json").read_text())
    assert laptop_layers(new) < laptop_layers(old)
    assert json.loads((tmp_path / "adapt" / "plan.json").read_text())["solver"]["adapted_at_round"] == 2
    # the same numbers as four rounds without any switch: weights and Adam moments moved, not reset
    run(tmp_path, lab_plan, "plain", rounds=4, steps_per_round=3, emulate="none")
    (ga, da), (gp, dp) = final_states(tmp_path / "adapt", lab_plan), final_states(tmp_path / "plain", lab_plan)
    for k, v in dp["lab"].items():
        torch.testing.assert_close(da["lab"][k], v, atol=1e-6, rtol=0, msg=k)
    for k, v in gp.items():
        torch.testing.assert_close(ga[k], v, atol=1e-6, rtol=0, msg=k)


def test_a_small_drift_does_not_switch(tmp_path, lab_plan):
    run(tmp_path, lab_plan, "drift", rounds=3, steps_per_round=3, emulate="sleep", adapt=True,
        slowdown=(("laptop", 1.05, 2),))
    assert not any(r.get("plan_switch") for r in _rows(tmp_path / "drift"))
