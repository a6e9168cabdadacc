"""The dist backend against the local one; a killed device ends the run cleanly; resume.

Every run is on loopback with a few seconds of timeout; ``train_dist`` kills its own
processes on the way out, and each test checks that none is left.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from planner.planfile import write_plan
from tests.test_trainer import chain_plan, tiny_dataset
from trainer import checkpoint
from trainer.config import TrainConfig
from trainer.dist import DeviceFailure, PeerLost, _root_cause, decode_header, encode_header
from trainer.dist_worker import pack, unpack
from trainer.federation import build_federation
from trainer.run import round_local, round_metrics
from trainer.transport import InProcessTransport

pytestmark = pytest.mark.slow
STEPS = 3
TIMEOUT_S = 8.0


def _cfg(tmp_path: Path, plan, out: str, **kw) -> TrainConfig:
    write_plan(plan, tmp_path / "plan.json")
    base = dict(plan_path=tmp_path / "plan.json", out_dir=tmp_path / out, backend="dist", steps_per_round=STEPS,
                emulate="none", eval_every=0, timeout_s=TIMEOUT_S)
    return TrainConfig(**(base | kw))


def _children() -> list[str]:
    """Command lines of live processes whose parent is this one (zombies excluded), but
    multiprocessing's own resource tracker, which lives as long as this process."""
    me, found = os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == me and fields[0] != "Z":
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            found.append(cmd)
    return [c for c in found if "resource_tracker" not in c]


def _bounded(fn, limit_s: float = 120.0):
    """``fn()`` in a thread, bounded: a hang fails the test instead of the session."""
    box: dict = {}

    def run():
        try:
            box["result"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
            box["error"] = e

    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(limit_s)
    assert not th.is_alive(), f"did not return within {limit_s:.0f} s"
    if "error" in box:
        raise box["error"]
    return box["result"]


def _train(cfg, plan, **kw) -> list[dict]:
    from trainer.dist import train_dist

    return _bounded(lambda: train_dist(cfg, plan, dataset=tiny_dataset(96), **kw))


def test_header_round_trip():
    for t in (torch.zeros(0), torch.ones(2, 3, 4, 5), torch.arange(7), torch.zeros(3, dtype=torch.uint8)):
        tag, dtype, shape = decode_header(encode_header(t, "act_d"))
        assert (tag, dtype, shape) == ("act_d", t.dtype, tuple(t.shape))
    with pytest.raises(ValueError):
        encode_header(torch.zeros(1), "no-such-tag")
    state = {"w": torch.randn(3), "n": 4, "nested": {"s": "x"}}
    back = unpack(pack(state))
    assert torch.equal(back["w"], state["w"]) and back["n"] == 4 and back["nested"] == {"s": "x"}


def test_root_cause_prefers_the_dead_process():
    lost = {"round": 2, "peer": "d1", "type": "PeerLost", "message": "d0 lost its connection to d1"}
    e = _root_cause([("d0", lost), ("d1", -9)], 2)
    assert isinstance(e, DeviceFailure) and e.device == "d1" and "SIGKILL" in str(e) and "round 2" in str(e)
    e = _root_cause([("server", {"round": 3, "peer": "d2", "type": "PeerTimeout", "message": "waited"})], 1)
    assert e.device == "d2" and e.round_no == 3
    assert issubclass(PeerLost, RuntimeError)


def test_dist_equals_local(tmp_path):
    plan = chain_plan("dcgan", [2])  # one client, two devices
    cfg = _cfg(tmp_path, plan, "dist", rounds=1)
    history = _train(cfg, plan)
    assert _children() == []

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank: Adam turns last-bit differences of tiny gradients into lr-sized steps
    try:
        fed = build_federation(plan, cfg, tiny_dataset(96), lock=threading.Lock())
        t = InProcessTransport()
        round_local(fed, t, cfg)
    finally:
        torch.set_num_threads(threads)
    local = round_metrics(fed, t, round_no=1, wall_s=0.0, steps=STEPS)

    (m,) = history
    assert set(m) == set(local)
    assert m["g_loss"] == pytest.approx(local["g_loss"], abs=1e-5)
    assert m["d_loss"].keys() == local["d_loss"].keys()
    for c, v in local["d_loss"].items():
        assert m["d_loss"][c] == pytest.approx(v, abs=1e-5)
    for name, d in local["devices"].items():  # the same bytes crossed each device's links
        assert (m["devices"][name]["bytes_sent"], m["devices"][name]["bytes_received"]) == \
            (d["bytes_sent"], d["bytes_received"])
    ck = torch.load(cfg.out_dir / "checkpoint" / "state.pt", weights_only=True)
    for k, v in fed.server.generator.state_dict().items():
        torch.testing.assert_close(ck["server"]["generator"][k], v, atol=1e-5, rtol=0)
    for c, d in fed.discriminators.items():  # the server's mirror holds every device's stage
        for k, v in d.state_dict().items():
            torch.testing.assert_close(ck["clients"][c]["discriminator"][k], v, atol=1e-5, rtol=0)


def test_killed_device_ends_the_run_and_resume_completes(tmp_path):
    plan = chain_plan("dcgan", [2])
    cfg = _cfg(tmp_path, plan, "run", rounds=3)
    victim, pids, killed_at = "c0-d1", {}, []

    def kill_after_first(m):
        if m["round"] == 1:
            os.kill(pids[victim], signal.SIGKILL)
            killed_at.append(time.monotonic())

    with pytest.raises(DeviceFailure) as err:
        _train(cfg, plan, on_start=lambda info: pids.update(info["pids"]), on_round=kill_after_first)
    assert time.monotonic() - killed_at[0] < TIMEOUT_S
    assert err.value.device == victim and err.value.round_no == 2
    assert victim in str(err.value) and "round 2" in str(err.value)
    assert _children() == []
    for pid in pids.values():
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[-1][:3]

    fed = build_federation(plan, cfg, tiny_dataset(96))
    assert checkpoint.load(fed, cfg.out_dir / "checkpoint")["round"] == 1

    resumed = _cfg(tmp_path, plan, "run", rounds=2, resume=True)
    history = _train(resumed, plan)
    assert [m["round"] for m in history] == [1, 2]
    assert _children() == []
    assert checkpoint.load(fed, cfg.out_dir / "checkpoint")["round"] == 2


def test_replan_on_failure_finishes_without_the_device(tmp_path):
    import json

    from trainer.run import _train_dist_replanning

    plan = chain_plan("dcgan", [2, 6])  # c0-d0 -> c0-d1 -> c0-d2
    cfg = _cfg(tmp_path, plan, "run", rounds=3, replan_on_failure=True)
    victim, pids, killed, notes = "c0-d2", {}, [], []

    def on_start(info):
        pids.update(info.get("pids", {}))
        if "replanned" in info:
            notes.append(info["replanned"])

    def kill_once(m):
        if m["round"] == 1 and not killed:
            os.kill(pids[victim], signal.SIGKILL)
            killed.append(m["round"])

    history = _bounded(lambda: _train_dist_replanning(cfg, plan, on_round=kill_once, on_start=on_start), 180)
    assert [m["round"] for m in history] == [1, 2, 3]
    assert notes and notes[0]["lost"] == victim
    final = json.loads((cfg.out_dir / "plan.json").read_text())
    assert victim not in {s["device"] for c in final["clients"] for s in c["stages"]}
    assert final["solver"]["lost"] == [victim]
    assert victim not in history[-1]["devices"]
    assert _children() == []
