"""``fsl calibrate`` as processes: it recovers the speeds of devices slowed by a spin of known
length that the test sets per process (not the project's emulation); on ``profiles/lab.json``
under ``--emulate sleep`` the profile it writes loads and ``fsl plan`` uses it; on the network
namespace testbed (``benchmarks.testbed``) the links it measures are the shaped rates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.testbed import Testbed, unavailable
from planner.devices import load_profile
from trainer.comm import msgtrace
from trainer.comm.sequence import declare_calibration, deviations, observed

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
BATCH, REPEATS = 8, 9  # small batch: the emulated devices sleep factor x the work; 9 passes: with
# 3 a burst of load on the shared VM took a layer's median (2.6x), with 5 a device's step (+18%)


# glibc moves its mmap threshold as a process frees large blocks, so whether c_conv's
# tensors come from fresh (page-faulting) mappings is down to chance: measured on the VM,
# one process's c_conv at batch 8 took 21 ms a pass, the next one's 29 ms, a step 15%
# apart. Pinned, every process allocates alike (20 ms); the devices' processes inherit it.
PINNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(2**32), "MALLOC_TRIM_THRESHOLD_": str(2**32)}


def _fsl(*args: str, timeout_s: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout_s, env={**os.environ, **PINNED_MALLOC, **(env or {})})


@pytest.fixture(scope="module")
def lab_calibrated(tmp_path_factory) -> Path:
    """lab.json calibrated under emulation, with the defaults: no --out, no --links. The
    profile it read stays byte for byte what it was; the result goes beside it."""
    folder = tmp_path_factory.mktemp("calibrate")
    original = (ROOT / "profiles" / "lab.json").read_bytes()
    (folder / "lab.json").write_bytes(original)
    r = _fsl("calibrate", "--devices", str(folder / "lab.json"), "--batch-size", str(BATCH), "--repeats",
             str(REPEATS), "--timeout-s", "120")
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert (folder / "lab.json").read_bytes() == original
    assert f"wrote {folder / 'lab.calibrated.json'} (links declared" in " ".join(r.stdout.split())
    return folder / "lab.calibrated.json"


def _calibrate_lab(out: Path) -> Path:
    r = _fsl("calibrate", "--devices", str(ROOT / "profiles" / "lab.json"), "--out", str(out), "--batch-size",
             str(BATCH), "--repeats", str(REPEATS), "--no-links", "--timeout-s", "120")
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return out


# A model whose cost is known without the project's code: one layer spins for SPIN_S of its
# thread's CPU time per forward and per backward call, times the multiplier BUSY_MULTIPLIERS
# gives this process's rank; the rest is a 16-weight linear layer (microseconds). Calibration
# times layers in thread CPU time (as --emulate virtual charges them), so a spin that counts its
# own CPU time costs what it says however loaded the host is (a sleep would cost nothing).
BUSY_FACTORY = """
import os, time
import torch
from torch import nn

SPIN_S = {spin_s}


def _spin():
    import torch.distributed as dist
    k = float(os.environ["BUSY_MULTIPLIERS"].split(",")[dist.get_rank()]) if dist.is_initialized() else 1.0
    t0 = time.thread_time()
    while time.thread_time() - t0 < SPIN_S * k:
        pass


class _Spin(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        _spin()
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        _spin()
        return g


class Busy(nn.Module):
    def forward(self, x):
        return _Spin.apply(x)


def build():
    d = nn.Sequential(Busy(), nn.Flatten(), nn.Linear(16, 1))
    g = nn.Sequential(nn.Linear(8, 16), nn.Unflatten(1, (1, 4, 4)), nn.Tanh())
    return {{"discriminator": d, "input_shape": (1, 4, 4), "generator": g, "z_dim": 8}}
"""
MULTIPLIERS = {"a": 1.0, "b": 2.0, "c": 4.0}  # each device's speed, set by the test through its rank


def test_calibration_recovers_speeds_set_outside_the_emulation(tmp_path):
    """With --emulate none, devices whose work costs 1x, 2x and 4x (a layer of known
    CPU time, scaled per process by the test, not by the project's emulation) are
    calibrated as such, the first time (no retry): the layer's step is its known cost, 3
    calls (two forwards, one backward: ``planner.profile``'s step of a first layer) x SPIN_S
    x the multiplier, within the 10 % by which the profile scales layers into the whole
    model's step, and each device's step over device a's is its multiplier within 10 %."""
    spin_s = 0.05
    (tmp_path / "busy.py").write_text(BUSY_FACTORY.format(spin_s=spin_s))
    devices = [{"name": n, "processing_time_factor": 1.0, "capacity": "1GB", "bandwidth_mbps": 1000,
                **({"holds_data": True} if n == "a" else {})} for n in MULTIPLIERS]
    (tmp_path / "busy.json").write_text(json.dumps({"schema": "fsl-devices/1", "clients": [
        {"name": "clinic", "devices": devices}]}))
    env = {"BUSY_MULTIPLIERS": ",".join(["1"] + [str(m) for m in MULTIPLIERS.values()]),  # rank 0: the server
           msgtrace.ENV: str(tmp_path / "trace")}
    (tmp_path / "trace").mkdir()
    r = _fsl("calibrate", "--devices", str(tmp_path / "busy.json"), "--model", f"{tmp_path / 'busy.py'}:build",
             "--batch-size", "8", "--repeats", "5", "--emulate", "none", "--no-links", "--timeout-s", "300",
             "--out", str(tmp_path / "out.json"), env=env, timeout_s=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    prof = load_profile(tmp_path / "out.json")
    steps = {d.name: sum(x.time_s for x in d.calibration[0].layers) for c in prof.clients for d in c.devices}
    assert all(d.calibration[0].emulate == "none" for c in prof.clients for d in c.devices)
    for c in prof.clients:
        for d in c.devices:
            assert d.calibration[0].layers[0].time_s >= 0.9 * 3 * spin_s * MULTIPLIERS[d.name], (d.name, steps)
    recovered = {n: steps[n] / steps["a"] for n in steps}
    for n, m in MULTIPLIERS.items():
        assert abs(recovered[n] / m - 1) < 0.10, (n, m, recovered)
    # and the coordinator's messages are the ones trainer.comm.sequence declares
    declared = declare_calibration({"clinic": list(MULTIPLIERS)}, passes=1 + 5)
    assert deviations(declared, observed(msgtrace.read(tmp_path / "trace"))) == []


def test_the_calibrated_profile_loads_and_fsl_plan_uses_it(lab_calibrated, tmp_path):
    out = lab_calibrated
    prof = load_profile(out)
    original = json.loads((ROOT / "profiles" / "lab.json").read_text())
    written = json.loads(out.read_text())
    for c, c0 in zip(written["clients"], original["clients"]):
        for d, d0 in zip(c["devices"], c0["devices"]):
            assert {k: v for k, v in d.items() if k != "calibration"} == d0  # links declared: nothing else changed
    for c in prof.clients:
        for d in c.devices:
            (cal,) = d.calibration
            assert (cal.batch_size, cal.emulate, cal.emulated_factor, cal.threads, cal.links) == (
                BATCH, "sleep", d.processing_time_factor, 1, "declared")
    r = _fsl("plan", "--devices", str(out), "--batch-size", str(BATCH), "--out", str(tmp_path / "plan.json"))
    assert r.returncode == 0, r.stderr[-2000:]
    plan = json.loads((tmp_path / "plan.json").read_text())
    devices = {d.name: d for c in prof.clients for d in c.devices}
    for c in plan["clients"]:
        assert c["time_source"] == {d: "calibration" for d in c["costs"]["devices"]}
        for name, row in zip(c["costs"]["devices"], c["costs"]["compute_s"]):
            layers = devices[name].calibration[0].layers
            assert row == pytest.approx([layers[a].time_s if b - a == 1 else sum(x.time_s for x in layers[a:b])
                                         for a, b in (u["model_layers"] for u in plan["model"]["layers"])])
    assert "calibrated" in (tmp_path / "plan.txt").read_text() and "calibrated" in r.stdout
    r = _fsl("plan", "--devices", str(ROOT / "profiles" / "lab.json"), "--batch-size", str(BATCH), "--out",
             str(tmp_path / "uncalibrated.json"), "--format", "json")
    assert r.returncode == 0, r.stderr[-2000:]
    for c in json.loads((tmp_path / "uncalibrated.json").read_text())["clients"]:
        assert set(c["time_source"].values()) == {"factor"}


def test_calibrated_bandwidth_is_the_shaped_rate_on_the_namespace_testbed(tmp_path):
    why = unavailable()
    if why:
        pytest.skip(why)
    rates = {"server": None, "a": 20.0, "b": 40.0}  # Mbps; a <-> b moves at a's 20
    prof = {"schema": "fsl-devices/1", "clients": [{"name": "c", "devices": [
        {"name": "a", "processing_time_factor": 1.0, "capacity": "1GB", "bandwidth_mbps": 20, "holds_data": True},
        {"name": "b", "processing_time_factor": 1.0, "capacity": "1GB", "bandwidth_mbps": 40}]}]}
    (tmp_path / "tb.json").write_text(json.dumps(prof))
    with Testbed(rates) as tb:
        prefix = tb.prefix
        assert "rate 20Mbit" in tb.qdiscs("a") and "rate 40Mbit" in tb.qdiscs("b")
        procs = tb.launch({"server": 0, "a": 1, "b": 2},
                          ["calibrate", "--devices", str(tmp_path / "tb.json"), "--out", str(tmp_path / "out.json"),
                           "--batch-size", "4", "--repeats", "1", "--timeout-s", "60", "--emulate", "none"],
                          logs=tmp_path)
        codes = tb.wait(procs, 150)
    logs = "\n".join((tmp_path / f"{r}.log").read_text()[-1500:] for r in rates)
    assert codes == {"server": 0, "a": 0, "b": 0}, logs
    assert prefix not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    out = load_profile(tmp_path / "out.json")
    assert {d.calibration[0].links for d in out.clients[0].devices} == {"measured"}
    (link,) = out.clients[0].links
    a, b = out.clients[0].devices
    measured = {"a-b": link.bandwidth_mbps, "server-a": a.bandwidth_mbps, "server-b": b.bandwidth_mbps}
    shaped = {"a-b": 20.0, "server-a": 20.0, "server-b": 40.0}
    assert all(abs(measured[k] / shaped[k] - 1) <= 0.10 for k in shaped), (measured, logs)
