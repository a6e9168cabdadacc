"""SPEC §2.1 end to end: planning with options, the plan file's new fields, ``fsl plan`` /
``fsl show`` reporting M, the bottleneck, flags and codecs, and the timeline.

The dcgan profile is the synthetic one (``conftest.py``); the recomputation case uses a
small model measured here, because on dcgan's layers recomputing never lowers the
modelled peak (each conv saves little more than its input; see ``planner.costs``).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from cli import app
from planner import plan
from planner.check import step_time_s
from planner.devices import parse_profile
from planner.errors import InputError, NoFeasiblePlan
from planner.models import LayeredModel, dcgan_discriminator
from planner.planfile import load_plan, parse_plan, write_plan
from planner.profile import measure
from planner.profile_cache import cache_path
from planner.reference import solve_reference
from planner.timeline import predicted_boxes

ROOT = Path(__file__).parent.parent


def _device(name, capacity, *, factor=1.0, mbps=100, data=False):
    return {"name": name, "processing_time_factor": factor, "capacity": capacity, "bandwidth_mbps": mbps,
            "latency_ms": 5, "holds_data": data}


def _profile(devices, budget_s=None):
    out = {"schema": "fsl-devices/1", "clients": [{"name": "c", "devices": devices}]}
    if budget_s is not None:
        out["budget"] = {"step_time_s": budget_s}
    return parse_profile(out)


PIPELINE = _profile([_device("phone", "1GB", factor=4.0, mbps=1000, data=True), _device("tablet", "1GB", factor=4.0,
                     mbps=1000), _device("laptop", "1GB", factor=4.0, mbps=1000)])


def test_throughput_plan_is_optimal_over_m_and_beats_latency(dcgan_profile):
    lat = plan(dcgan_discriminator(), PIPELINE, model_profile=dcgan_profile, compare=False)
    tp = plan(dcgan_discriminator(), PIPELINE, model_profile=dcgan_profile, objective="throughput", compare=False)
    (c,) = tp.clients
    assert c.costs.micro_batch_choices == (1, 2, 4, 8, 16) and c.micro_batches > 1
    assert c.step_time_s < lat.clients[0].step_time_s
    ref = solve_reference(c.costs, objective="throughput")
    assert c.step_time_s == pytest.approx(ref.step_time_s, rel=1e-6)
    boxes = predicted_boxes(c)  # the fill-drain schedule ends where the formula says
    assert max(b.end_s for b in boxes) == pytest.approx(c.step_time_s, rel=1e-12)
    assert len(boxes) == c.micro_batches * (2 * len(c.stages) - 1)


def test_each_m_is_planned_on_tables_measured_at_its_micro_batch_size(tmp_path):
    model = dcgan_discriminator()
    p = plan(model, PIPELINE, batch_size=8, objective="throughput", compare=False)  # profiles, so measures each M
    (c,) = p.clients
    assert c.costs.micro_batch_choices == (1, 2, 4, 8)
    assert {m for m, _ in c.costs.per_micro_batch} == {2, 4, 8}  # M = 1's are the base tables
    # the plan's M is the best over every M, each on its own tables (the reference re-solves)
    assert c.step_time_s == pytest.approx(solve_reference(c.costs, objective="throughput").step_time_s, rel=1e-6)
    assert c.step_time_s == pytest.approx(min(c.steps_by_micro_batches_s().values()), rel=1e-9)
    write_plan(p, tmp_path / "p.json")  # every M's tables survive the file
    assert load_plan(tmp_path / "p.json").clients[0].costs == c.costs
    # M = 8: its tables are the model measured at batch 1 (cached), 8 times but for the one Adam update, on 4x devices
    one = json.loads(cache_path(model, 1).with_suffix(".times.json").read_text())  # the layers timed at batch 1
    assert one["batch_size"] == 1
    at8 = c.costs.at(8).compute_s[0]
    for (t, _, _, u), x in zip(one["layers"][:-1], at8):  # the last layer carries the loss, weights accumulate
        if u == 0:
            assert x == pytest.approx(4.0 * 8 * t)
    (m8,) = plan(model, PIPELINE, batch_size=8, objective="throughput", micro_batches=(8,), compare=False).clients
    assert m8.micro_batches == 8 and m8.costs.at(8).compute_s[0] == pytest.approx(c.costs.at(8).compute_s[0])
    (m1,) = plan(model, PIPELINE, batch_size=8, compare=False).clients  # memory and bytes stay the whole batch's
    assert c.costs.at(8).cut_bytes == m1.costs.cut_bytes and c.costs.at(1).compute_s == m1.costs.compute_s


def test_codec_only_where_allowed_and_named_when_it_would_fit(dcgan_profile):
    # the phone holds a_conv only; its 19 MB cut over 10 Mbps takes 15 s raw, 3.9 s in int8
    slow = _profile([_device("phone", "20MB", factor=4.0, mbps=10, data=True), _device("laptop", "2GB")], 6.0)
    with pytest.raises(NoFeasiblePlan) as info:
        plan(dcgan_discriminator(), slow, model_profile=dcgan_profile)
    reason = info.value.reasons["c"]
    assert "budget 6.00 s" in reason and "fits with --codecs none,int8" in reason
    allowed = plan(dcgan_discriminator(), slow, model_profile=dcgan_profile, codecs=("int8",))
    assert [s.codec for s in allowed.clients[0].stages] == ["int8", "none"]
    assert allowed.clients[0].step_time_s <= 6.0


class _Block(nn.Module):
    """Three convolutions read as one layer: big saved tensors, a small input."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 32, 3, 1, 1), nn.ReLU(), nn.Conv2d(32, 32, 3, 1, 1), nn.ReLU())

    def forward(self, x):
        return self.body(x)


@pytest.fixture(scope="module")
def block_model():
    seq = nn.Sequential(_Block(), nn.Conv2d(32, 8, 4, 4), nn.Flatten(), nn.Linear(8 * 7 * 7, 1))
    model = LayeredModel.from_module("block", seq, torch.zeros(1, 1, 28, 28))
    return model, measure(model, batch_size=16, repeats=1, warmup=1)


def test_first_layer_fits_only_when_recomputed(block_model):
    """A data device that cannot hold its first layer without recomputation is planned
    with recomputation allowed and excluded without, with the reason (issue 12)."""
    model, prof = block_model
    first = prof.layers[0]
    held = 2 * first.input_bytes + first.memory_bytes - first.saved_bytes
    capacity = held + first.saved_bytes // 2  # fits saved / 4, not the whole of saved
    assert capacity < first.memory_bytes
    devices = _profile([_device("tag", str(capacity), data=True), _device("laptop", "1GB")])
    kw = dict(model_profile=prof, batch_size=16, objective="throughput", micro_batches=(4, 8))
    auto = plan(model, devices, **kw)
    assert auto.clients[0].status == "planned" and auto.clients[0].stages[0].recompute
    with pytest.raises(NoFeasiblePlan) as info:
        plan(model, devices, recompute=False, **kw)
    reason = info.value.reasons["c"]
    assert "first segment needs at least" in reason and "on tag" in reason
    assert "fits with --recompute auto" in reason
    # one micro-batch: recomputing does not lower the peak, so latency cannot place it
    with pytest.raises(NoFeasiblePlan) as info:
        plan(model, devices, model_profile=prof, batch_size=16)
    assert "first segment needs at least" in info.value.reasons["c"]


@pytest.mark.parametrize("kw, where", [
    ({"micro_batches": (3,)}, "--micro-batches"),
    ({"micro_batches": (2,)}, "--micro-batches"),  # latency runs one micro-batch
    ({"codecs": ("zip",)}, "--codecs"),
])
def test_bad_options_are_input_errors(kw, where, dcgan_profile):
    with pytest.raises(InputError, match=where):
        plan(dcgan_discriminator(), PIPELINE, model_profile=dcgan_profile, **kw)


@pytest.fixture(scope="module")
def options_plan(dcgan_profile):
    return plan(dcgan_discriminator(), PIPELINE, model_profile=dcgan_profile, objective="throughput",
                codecs=("fp16", "int8"), micro_batches=(1, 2, 4, 8))


def test_plan_file_round_trip_and_strict_fields(options_plan, tmp_path):
    path = tmp_path / "plan.json"
    write_plan(options_plan, path)
    assert load_plan(path) == options_plan
    data = json.loads(path.read_text())
    c = data["clients"][0]
    assert {"micro_batches", "stages", "costs"} <= set(c) and data["server"]["step_s"] == 0.04
    assert {"micro_batch_choices", "overhead_s", "recompute", "codecs", "server_transfer_s"} <= set(c["costs"])
    assert {"recompute", "codec"} <= set(c["stages"][0])

    def broken(edit) -> str:
        d = copy.deepcopy(data)
        edit(d["clients"][0])
        with pytest.raises(InputError) as info:
            parse_plan(d, source="p.json")
        return str(info.value)

    assert "micro_batches" in broken(lambda c: c.update(micro_batches=3))  # not a divisor of 64
    assert "micro_batch_choices" in broken(lambda c: c.update(micro_batches=16))
    assert "not in costs.codecs" in broken(lambda c: c["stages"][0].update(codec="zip"))
    assert "does not match its own tables" in broken(
        lambda c: c.update(micro_batches=1 if c["micro_batches"] != 1 else 2))
    assert "overhead_s" in broken(lambda c: c["costs"].update(overhead_s=[0.1]))
    assert "recompute" in broken(lambda c: c["costs"].pop("recompute") and c["stages"][0].update(recompute=True))
    assert "codec_s" in broken(lambda c: c["costs"]["codecs"]["int8"].update(codec_s=[[0.0]]))


def test_a_plan_without_21_fields_checks_as_section_2(tmp_path, dcgan_profile):
    """No micro-batches, overheads, options or server: §2's latency formula, unchanged."""
    data = plan(dcgan_discriminator(), PIPELINE, model_profile=dcgan_profile).to_json()
    data.pop("server")
    c = data["clients"][0]
    c.pop("micro_batches")
    for key in ("micro_batch_choices", "overhead_s", "recompute", "codecs", "server_transfer_s"):
        c["costs"].pop(key, None)
    for s in c["stages"]:
        del s["recompute"], s["codec"]
    section2 = sum(s["compute_s"] + s["transfer_s"] for s in c["stages"])  # compute plus transfer, nothing else
    c["step_time_s"] = section2
    (client,) = parse_plan(data).clients
    assert client.micro_batches == 1 and client.costs.overhead_s is None and client.costs.codecs == ()
    assert step_time_s(client.costs, client.solver_stages()) == pytest.approx(section2)


def test_fsl_plan_and_show_report_m_bottleneck_and_options(tmp_path, profile_cache):
    out = tmp_path / "plan.json"
    r = CliRunner().invoke(app, ["plan", "--devices", str(ROOT / "profiles" / "lab.json"), "--objective", "throughput",
                                 "--micro-batches", "1,2,4,8", "--codecs", "none,int8", "--out", str(out),
                                 "--figure", str(tmp_path / "plan.png")])
    assert r.exit_code == 0, (r.stderr, r.exception)
    assert (tmp_path / "plan.png").stat().st_size > 0
    p = load_plan(out)
    for c in p.planned:
        assert f"M = {c.micro_batches}, bottleneck {max(c.units_s()):.4f} s per micro-batch" in r.stdout
    assert "codec" in r.stdout and "recompute" in r.stdout and "overhead s" in r.stdout
    figure = tmp_path / "timeline.png"
    r = CliRunner().invoke(app, ["show", str(out), "--figure", str(figure)])
    assert r.exit_code == 0, (r.stderr, r.exception)
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "M from [1, 2, 4, 8]" in r.stdout


@pytest.mark.parametrize("args, where", [
    (["--micro-batches", "1,x", "--objective", "throughput"], "--micro-batches"),
    (["--micro-batches", "5", "--objective", "throughput"], "--micro-batches"),
    (["--codecs", "none,zip"], "--codecs"),
    (["--recompute", "maybe"], "--recompute"),
])
def test_fsl_plan_bad_option_values_exit_2_with_one_line(args, where, tmp_path, profile_cache):
    r = CliRunner().invoke(app, ["plan", "--devices", str(ROOT / "profiles" / "lab.json"), *args,
                                 "--out", str(tmp_path / "p.json")])
    assert r.exit_code == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and where in lines[0] and "Traceback" not in r.stderr


def test_without_device_drops_every_per_device_table(options_plan):
    """Re-planning around a lost device (trainer/adapt/replan.py) needs the §2.1 tables cut too."""
    from planner.ilp import solve_ilp

    p = options_plan.clients[0].costs
    q = p.without_device(1)
    assert q.devices == (p.devices[0], p.devices[2]) and q.data_device == 0
    assert q.overhead_s == (p.overhead_s[0], p.overhead_s[2])
    assert q.recompute.memory_bytes == (p.recompute.memory_bytes[0], p.recompute.memory_bytes[2])
    assert [c.codec_s for c in q.codecs] == [(c.codec_s[0], c.codec_s[2]) for c in p.codecs]
    assert q.link_latency_s == ((0.0, p.link_latency_s[0][2]), (p.link_latency_s[2][0], 0.0))
    sol = solve_ilp(q, objective="throughput")
    assert sol.status == "optimal" and {s.device for s in sol.stages} <= {0, 1}
