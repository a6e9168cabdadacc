"""Device calibrations without processes: the format (strict, keyed), their use in the cost
tables in place of factor x the host's profile, writing a profile back, and the link fit.
The multi-process calibrations themselves are in ``test_calibrate_run``."""

from __future__ import annotations

import copy
import json
import threading

import pytest

from planner import plan
from planner.calibration import FORMAT, calibrated_profile
from planner.devices import parse_profile
from planner.errors import InputError
from planner.models import dcgan_discriminator
from planner.planfile import load_plan, write_plan
from views.plan import write_plan_table
from trainer.comm.linkprobe import echo, fit_link, probe
from trainer.comm.transport import InProcessTransport


def _entry(dcgan_profile, *, scale: float = 0.01, **kw) -> dict:
    """A calibration of dcgan at the synthetic profile's batch: layer i takes scale x (i + 1) s."""
    layers = [{"name": lp.name, "time_s": scale * (i + 1), "forward_s": scale * (i + 1) / 4,
               "codec_s": {"fp16": 0.001 * (i + 1), "int8": 0.002 * (i + 1)}}
              for i, lp in enumerate(dcgan_profile.layers)]
    return {"format": FORMAT, "model": "dcgan", "fingerprint": dcgan_profile.fingerprint,
            "batch_size": dcgan_profile.batch_size, "torch_version": dcgan_profile.torch_version, "host": "phone-1",
            "threads": 1, "emulate": "none", "measured_at": "2025-01-01T00:00:00Z", "overhead_s": 0.002,
            "layers": layers} | kw


def _profile(calibration: list[dict] | None = None) -> dict:
    phone = {"name": "phone", "processing_time_factor": 4.0, "capacity": "1GB", "bandwidth_mbps": 100,
             "holds_data": True}
    if calibration is not None:
        phone["calibration"] = calibration
    laptop = {"name": "laptop", "processing_time_factor": 2.0, "capacity": "2GB", "bandwidth_mbps": 100}
    return {"schema": "fsl-devices/1", "clients": [{"name": "home", "devices": [phone, laptop]}]}


def _plan(dcgan_profile, prof: dict, **kw):
    return plan(dcgan_discriminator(), parse_profile(prof), model_profile=dcgan_profile, compare=False, **kw)


def test_a_matching_calibration_replaces_factor_times_the_host(dcgan_profile):
    entry = _entry(dcgan_profile)
    p = _plan(dcgan_profile, _profile([entry]), objective="throughput", codecs=("fp16", "int8"))
    (c,) = p.planned
    costs = c.costs
    assert c.time_source == {"phone": "calibration", "laptop": "factor"}
    mine = [x["time_s"] for x in entry["layers"]]
    assert costs.compute_s[0] == pytest.approx(mine)  # dcgan: one layer per planning unit
    assert costs.compute_s[1] == pytest.approx([2.0 * lp.time_s for lp in dcgan_profile.layers])
    assert costs.recompute.compute_s[0] == pytest.approx([1.25 * t for t in mine])
    assert costs.overhead_s == pytest.approx((0.002, 2.0 * dcgan_profile.overhead_s))
    int8 = next(k for k in costs.codecs if k.name == "int8")
    assert int8.codec_s[0] == pytest.approx([0.002 * (i + 1) for i in range(len(mine) - 1)])
    assert int8.codec_s[1] == pytest.approx([2.0 * lp.codec_s["int8"] for lp in dcgan_profile.layers[:-1]])


@pytest.mark.parametrize("change", [{"batch_size": 32}, {"torch_version": "1.0"}, {"fingerprint": "sha256:" + "0" * 64},
                                    {"emulate": "sleep", "emulated_factor": 3.0}])
def test_a_calibration_of_another_batch_torch_model_or_factor_is_not_used(dcgan_profile, change):
    p = _plan(dcgan_profile, _profile([_entry(dcgan_profile, **change)]))
    (c,) = p.planned
    assert c.time_source == {"phone": "factor", "laptop": "factor"}
    assert c.costs.compute_s[0] == pytest.approx([4.0 * lp.time_s for lp in dcgan_profile.layers])


def test_an_emulated_calibration_matches_while_the_factor_is_the_one_it_emulated(dcgan_profile):
    p = _plan(dcgan_profile, _profile([_entry(dcgan_profile, emulate="sleep", emulated_factor=4.0)]))
    assert p.planned[0].time_source["phone"] == "calibration"


def test_the_plan_records_and_shows_where_times_come_from(dcgan_profile, tmp_path):
    p = _plan(dcgan_profile, _profile([_entry(dcgan_profile, scale=1e-4)]))
    write_plan(p, tmp_path / "plan.json")
    back = load_plan(tmp_path / "plan.json")
    assert back.planned[0].time_source == {"phone": "calibration", "laptop": "factor"}
    assert json.loads((tmp_path / "plan.json").read_text())["clients"][0]["time_source"]["phone"] == "calibration"
    write_plan_table(back, tmp_path / "plan.txt")
    text = (tmp_path / "plan.txt").read_text()
    assert "calibrated" in text and "2x host" in text


def test_a_calibration_whose_layers_are_not_the_models_is_an_input_error(dcgan_profile):
    entry = _entry(dcgan_profile)
    entry["layers"] = entry["layers"][:-1]
    with pytest.raises(InputError, match=r"clients\[0\]\.devices\[0\]\.calibration\[0\]\.layers: 10 layers"):
        _plan(dcgan_profile, _profile([entry]))


@pytest.mark.parametrize("edit, field, message", [
    (lambda e: e.update(colour="red"), "calibration[0].colour", "unknown field"),
    (lambda e: e.update(emulate="sleep"), "calibration[0]", "emulated_factor is given exactly when"),
    (lambda e: e["layers"][2].update(forward_s=1.0), "calibration[0].layers[2]", "forward_s 1 exceeds time_s"),
    (lambda e: e["layers"][0].update(time_s=-1.0), "calibration[0].layers[0].time_s", "greater than or equal to 0"),
    (lambda e: e.update(format="fsl-calibration/9"), "calibration[0].format", "fsl-calibration/1"),
])
def test_a_malformed_calibration_names_its_field(dcgan_profile, edit, field, message):
    entry = _entry(dcgan_profile)
    edit(entry)
    with pytest.raises(InputError) as e:
        parse_profile(_profile([entry]), source="lab.json")
    assert e.value.field == f"clients[0].devices[0].{field}" and message in e.value.problem


def test_two_calibrations_with_one_key_are_an_error_and_different_keys_coexist(dcgan_profile):
    with pytest.raises(InputError, match="repeats the fingerprint, batch_size and torch_version"):
        parse_profile(_profile([_entry(dcgan_profile), _entry(dcgan_profile, scale=0.02)]))
    prof = parse_profile(_profile([_entry(dcgan_profile), _entry(dcgan_profile, batch_size=8)]))
    assert [c.batch_size for c in prof.clients[0].devices[0].calibration] == [64, 8]


def _fit(bytes_per_s: float, intercept_s: float) -> dict:
    return {"bytes_per_s": bytes_per_s, "intercept_s": intercept_s, "sizes": [1], "seconds": [1.0], "residual_s": 0.0}


def test_writing_back_replaces_the_same_key_and_the_measured_links(dcgan_profile):
    old, other = _entry(dcgan_profile, scale=0.5), _entry(dcgan_profile, batch_size=8)
    raw = _profile([old, other])
    raw["clients"][0]["links"] = [{"a": "laptop", "b": "phone", "bandwidth_mbps": 1.0}]
    before = copy.deepcopy(raw)
    new = _entry(dcgan_profile, scale=0.01)
    result = {"calibrations": {"phone": new},
              "links": {"home": [{"a": "phone", "b": "laptop", **_fit(2.5e6, 0.002)}]},
              "server_links": {"phone": _fit(12.5e6, 0.003)}}
    out = parse_profile(calibrated_profile(raw, result))
    assert raw == before  # the input is left as it was
    phone, laptop = out.clients[0].devices
    assert [(c.batch_size, c.layers[0].time_s) for c in phone.calibration] == [(8, 0.01), (64, 0.01)]
    (link,) = out.clients[0].links
    # 2.5e6 B/s = 20 Mbps; a cut crossing sends 4 messages, the intercept is 2 of them: 2 x 2 ms
    assert (link.a, link.b, link.bandwidth_mbps, link.latency_ms) == ("phone", "laptop", 20.0, 4.0)
    # the server exchange sends 2 messages: the intercept itself
    assert (phone.bandwidth_mbps, phone.latency_ms) == (100.0, 3.0)
    assert (laptop.bandwidth_mbps, laptop.latency_ms, laptop.calibration) == (100.0, 0.0, [])


def test_fit_link_recovers_a_line_and_refuses_a_flat_one():
    sizes = [1024, 131072, 262144, 524288, 1048576]
    fit = fit_link(sizes, [0.004 + s / 2.5e6 for s in sizes])
    assert fit.bytes_per_s == pytest.approx(2.5e6) and fit.intercept_s == pytest.approx(0.004)
    assert fit.mbps == pytest.approx(20.0) and fit.residual_s == pytest.approx(0.0, abs=1e-12)
    assert fit_link(sizes, [s / 2.5e6 - 0.001 for s in sizes]).intercept_s == 0.0  # a burst's head start
    with pytest.raises(ValueError, match="does not grow"):
        fit_link(sizes, [0.01] * len(sizes))


def test_probe_and_echo_end_together_over_a_transport():
    t = InProcessTransport()
    helper = threading.Thread(target=echo, args=(t, "b", "a"), kwargs={"timeout_s": 30}, daemon=True)
    helper.start()
    fit = probe(t, "a", "b", timeout_s=30)
    helper.join(10)
    assert not helper.is_alive()  # the empty probe ended the echo
    assert fit.bytes_per_s > 0 and len(fit.sizes) == 5 and fit.sizes[0] == 1024
    assert list(fit.sizes[1:]) == [fit.sizes[-1] // k for k in (8, 4, 2, 1)]
    assert t.log.control_bytes_sent["a"] >= sum(fit.sizes) * 3  # every probe crossed, as control traffic
