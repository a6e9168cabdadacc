"""The dist backend against the local one; a killed device ends the run cleanly; resume.

Every run is on loopback with a few seconds of timeout; the dist backend kills its own
processes on the way out, and each test checks that none is left.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from planner.models import Generator
from tests.helpers import chain_plan, config, final_states
from trainer import DeviceFailure, train
from trainer.comm import msgtrace
from trainer.errors import PeerLost, RankFailure, root_cause
from trainer.state import pack, unpack
from trainer.comm.wire import decode_header, encode_header

pytestmark = pytest.mark.slow
STEPS = 3
TIMEOUT_S = 8.0


def _cfg(tmp_path: Path, plan, out: str, **kw):
    return config(tmp_path, plan, out, **({"backend": "dist", "steps_per_round": STEPS, "timeout_s": TIMEOUT_S} | kw))


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


def _train(cfg, **kw) -> list[dict]:
    return _bounded(lambda: train(cfg, **kw), 180)


def test_header_round_trip():
    for t in (torch.zeros(0), torch.ones(2, 3, 4, 5), torch.arange(7), torch.zeros(3, dtype=torch.uint8)):
        tag, epoch, dtype, shape = decode_header(encode_header(t, "act_d", 7))
        assert (tag, epoch, dtype, shape) == ("act_d", 7, t.dtype, tuple(t.shape))
    with pytest.raises(Exception, match="unknown tag"):
        encode_header(torch.zeros(1), "no-such-tag", 0)
    with pytest.raises(Exception, match="malformed"):
        decode_header(torch.tensor([999, 0, 0, 0] + [0] * 8))
    state = {"w": torch.randn(3), "n": 4, "nested": {"s": "x"}}
    back = unpack(pack(state), source="test")
    assert torch.equal(back["w"], state["w"]) and back["n"] == 4 and back["nested"] == {"s": "x"}


def test_root_cause_prefers_the_dead_process():
    lost = RankFailure("d0", 2, "peer", "PeerLost: d0 lost its connection to d1", peer="d1")
    e = root_cause([lost, RankFailure.died("d1", 2, -9)], 2)
    assert isinstance(e, DeviceFailure) and e.device == "d1" and "SIGKILL" in str(e) and "round 2" in str(e)
    e = root_cause([RankFailure("server", 3, "peer", "PeerTimeout: waited", peer="d2")], 1)
    assert e.device == "d2" and e.round_no == 3
    aborted = RankFailure("d3", 1, "aborted", "RunAborted: d0 failed")
    e = root_cause([aborted, RankFailure("d0", 1, "own", "ValueError: boom")], 1)
    assert e.device == "d0" and "boom" in str(e)
    assert issubclass(PeerLost, Exception) and RankFailure.of("x", 1, PeerLost("a", "b", OSError())).kind == "peer"


def _without_times(m: dict) -> dict:
    """A round's metrics without what depends on wall-clock time."""
    m = json.loads(json.dumps(m))
    m.pop("round_time_s")
    m["server"].pop("compute_s")
    for c in m["clients"].values():
        c.pop("step_time_s"), c.pop("host_wait_s")
    for d in m["devices"].values():
        for k in ("compute_s", "work_s", "wait_s"):
            d.pop(k)
    return m


def test_emulated_pipelined_step_equals_local(tmp_path):
    """Under --emulate sleep every message crosses an emulated link, whose thread hands it
    to gloo while the role goes on; with M = 2 through three stages the dist backend's
    step is the local one's, in losses, bytes and the checkpoint after it."""
    plan = chain_plan("dcgan", [2, 6], micro_batches=2)
    runs = {b: _train(_cfg(tmp_path, plan, b, backend=b, rounds=1, steps_per_round=1, emulate="sleep"))
            for b in ("dist", "local")}
    assert _children() == []
    (d,), (lo,) = runs["dist"], runs["local"]
    assert d["g_loss"] == pytest.approx(lo["g_loss"], abs=1e-5)
    assert d["d_loss"]["client0"] == pytest.approx(lo["d_loss"]["client0"], abs=1e-5)
    assert {k: v["bytes_sent"] for k, v in d["devices"].items()} == {k: v["bytes_sent"] for k, v in lo["devices"].items()}
    (g_d, discs_d), (g_l, discs_l) = final_states(tmp_path / "dist", plan), final_states(tmp_path / "local", plan)
    for k, v in g_l.items():
        torch.testing.assert_close(g_d[k], v, atol=1e-5, rtol=0)
    for k, v in discs_l["client0"].items():
        torch.testing.assert_close(discs_d["client0"][k], v, atol=1e-5, rtol=0)


def test_dist_equals_local(tmp_path):
    """Two clients, three rounds: the same start report, losses and bytes every round, and
    the same final checkpoint, whichever backend runs the one loop."""
    plan = chain_plan("dcgan", [[2], [3, 7]])
    starts = {}
    runs = {b: _train(_cfg(tmp_path, plan, b, backend=b, rounds=3), on_start=lambda i, b=b: starts.setdefault(b, i))
            for b in ("dist", "local")}
    assert _children() == []
    assert [m["round"] for m in runs["dist"]] == [1, 2, 3]
    for dm, lm in zip(runs["dist"], runs["local"]):
        d, lo = _without_times(dm), _without_times(lm)
        assert d.keys() == lo.keys()
        assert d["g_loss"] == pytest.approx(lo["g_loss"], abs=1e-5)
        for c in lo["d_loss"]:
            assert d["d_loss"][c] == pytest.approx(lo["d_loss"][c], abs=1e-5)
        d.pop("g_loss"), lo.pop("g_loss"), d.pop("d_loss"), lo.pop("d_loss")
        assert d == lo  # bytes per device, steps, predictions: identical
    for key in ("start_round", "rounds", "clients", "warnings"):
        assert starts["dist"][key] == starts["local"][key]
    data = ("data_files", "data_files_sha256", "data_folders_listed")  # imports differ (one interpreter or many)
    strip = {b: [{k: v for k, v in p.items() if k not in ("pid", "host")}
                 | {"opened": {k: p["opened"][k] for k in data}} for p in starts[b]["processes"]]
             for b in ("local", "dist")}
    assert strip["local"] == strip["dist"]
    (g_d, discs_d), (g_l, discs_l) = final_states(tmp_path / "dist", plan), final_states(tmp_path / "local", plan)
    for k, v in g_l.items():
        torch.testing.assert_close(g_d[k], v, atol=1e-5, rtol=0)
    for c, state in discs_l.items():
        for k, v in state.items():
            torch.testing.assert_close(discs_d[c][k], v, atol=1e-5, rtol=0)


def test_killed_device_ends_the_run_and_resume_completes(tmp_path):
    plan = chain_plan("dcgan", [2])
    cfg = _cfg(tmp_path, plan, "run", rounds=3)
    victim, pids, killed_at = "c0-d1", {}, []

    def kill_after_first(m):
        if m["round"] == 1:
            os.kill(pids[victim], signal.SIGKILL)
            killed_at.append(time.monotonic())

    with pytest.raises(DeviceFailure) as err:
        _train(cfg, on_start=lambda info: pids.update(info["pids"]), on_round=kill_after_first)
    assert time.monotonic() - killed_at[0] < TIMEOUT_S
    assert err.value.device == victim and err.value.round_no == 2
    assert victim in str(err.value) and "round 2" in str(err.value)
    assert _children() == []
    for pid in pids.values():
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[-1][:3]
    assert torch.load(cfg.out_dir / "checkpoint" / "server.pt", weights_only=True)["round"] == 1

    history = _train(_cfg(tmp_path, plan, "run", rounds=2, resume=True))
    assert [m["round"] for m in history] == [1, 2]
    assert _children() == []
    assert torch.load(cfg.out_dir / "checkpoint" / "server.pt", weights_only=True)["round"] == 2


ADAM_STEP_BOUND = 2e-4 * 0.5 / 0.001 ** 0.5  # |an Adam update| <= lr (1 - b1) / sqrt(1 - b2) (Kingma and Ba, s. 2.1)


def test_replan_on_failure_finishes_without_the_device(tmp_path, monkeypatch):
    """c0-d2 is killed after round 1; the run re-plans without it (c0-d0 may hold 3 layers
    at most, so c0-d1 takes the rest) and resumes from round 1's checkpoint. The weights
    carry over, checked against that checkpoint as it was before the kill: every
    parameter the data device hands c0-d1 equals it, parameter by parameter, and covers
    every layer c0-d0 does not hold; after round 2's one step every parameter is within
    one Adam update of it; the generator's first fake images after the switch are what
    round 1's generator and noise stream make (recomputed here)."""
    plan = chain_plan("dcgan", [2, 6], batch=16)  # c0-d0 -> c0-d1 -> c0-d2
    (c,) = plan.clients
    plan = replace(plan, clients=(replace(c, costs=replace(c.costs, capacity_bytes=(3, 10**9, 10**9))),))
    folder = tmp_path / "trace"
    folder.mkdir()
    monkeypatch.setenv(msgtrace.ENV, str(folder))
    monkeypatch.setenv(msgtrace.PAYLOADS_ENV, "state,fake")
    cfg = _cfg(tmp_path, plan, "run", rounds=3, replan_on_failure=True, steps_per_round=1)
    victim, pids, killed, notes, before = "c0-d2", {}, [], [], {}

    def on_start(info):
        pids.update(info.get("pids", {}))
        if "replanned" in info:
            notes.append(info["replanned"])

    def on_round(m):
        ck = cfg.out_dir / "checkpoint"
        if m["round"] == 2 and killed:
            before["round 2"] = torch.load(ck / "client-client0-r0002.pt", weights_only=True)
        if m["round"] == 1 and not killed:
            before["client"] = torch.load(ck / "client-client0-r0001.pt", weights_only=True)
            before["server"] = torch.load(ck / "server.pt", weights_only=True)
            os.kill(pids[victim], signal.SIGKILL)
            killed.append(m["round"])

    history = _bounded(lambda: train(cfg, on_round=on_round, on_start=on_start), 400)  # two runs, a failure
    assert [m["round"] for m in history] == [1, 2, 3]
    assert notes and notes[0]["lost"] == victim
    final = json.loads((cfg.out_dir / "plan.json").read_text())
    assert [s["device"] for s in final["clients"][0]["stages"]] == ["c0-d0", "c0-d1"]
    assert final["solver"]["lost"] == [victim]
    assert victim not in history[-1]["devices"]
    assert _children() == []
    # the weights after the switch against round 1's checkpoint, taken before the kill
    rows = msgtrace.read(folder)
    after = {r["pid"] for r in rows if r["round"] == 3}  # the re-planned run's processes
    (handed,) = [unpack(msgtrace.payload(folder, r), source="state") for r in rows
                 if r["pid"] in after and r["src"] == "c0-d0" and r["dst"] == "c0-d1" and r["tag"] == "state"]
    want = before["client"]["weights"]
    head = final["clients"][0]["stages"][0]
    own = {k for k in want if head["start"] <= int(k.split(".")[1]) < head["end"]}  # "layers.<i>.<param>"
    assert handed["weights"] and set(handed["weights"]) == set(want) - own
    for k, v in handed["weights"].items():
        assert torch.equal(v, want[k]), k
    for k, v in before["round 2"]["weights"].items():
        assert float((v - want[k]).abs().max()) <= ADAM_STEP_BOUND * 1.001, k
    server_ck = before["server"]
    g = Generator()
    g.load_state_dict(server_ck["generator"])
    z = torch.randn(plan.batch_size, g.z_dim, generator=torch.Generator().set_state(server_ck["z_generator"]))
    fake = next(msgtrace.payload(folder, r) for r in rows if r["pid"] in after and r["tag"] == "fake")
    torch.testing.assert_close(fake, g(z).detach(), atol=1e-6, rtol=0)
