"""``--emulate virtual`` (issue 22): each role's clock advances by its work x its factor, a
message arrives at ``max(sent, link free) + bytes / bandwidth + latency / 4`` over a link
kept busy per direction. Every expected number below is worked out by hand in the
comments, from the literal durations and link parameters of the test."""

from __future__ import annotations

import json
import threading
import time

import pytest
import torch

from tests.helpers import chain_plan, run
from trainer.roles import clock as clock_module
from trainer.roles.clock import Clock
from trainer.comm.transport import InProcessTransport
from trainer.comm.links import LinkTable

# 25 float32 = 100 bytes; at 1000 bytes/s with 40 ms latency (a quarter per message, as
# trainer.comm.links charges it): 0.1 + 0.01 = 0.11 s per message over either direction.
MSG = torch.zeros(25)


def _two_devices(*, bytes_per_s: float = 1000.0, latency_s: float = 0.04, factors=(1.0, 1.0)):
    links = LinkTable({("a", "b"): bytes_per_s, ("b", "a"): bytes_per_s}, {("a", "b"): latency_s, ("b", "a"): latency_s})
    t = InProcessTransport(links, virtual=True)
    clocks = {n: Clock(factor=f, virtual=True) for n, f in zip("ab", factors)}
    for n, c in clocks.items():
        t.attach(n, c)
    return t, clocks


def test_two_stages_one_micro_batch():
    """a (factor 2) works 0.1 s -> 0.2; act arrives 0.2 + 0.11 = 0.31; b works 0.3 s -> 0.61;
    grad arrives 0.72; a's backward 0.05 s x 2 -> 0.82."""
    t, c = _two_devices(factors=(2.0, 1.0))
    c["a"].advance(0.1)
    t.send("a", "b", MSG, tag="act_d")
    t.recv("b", "a", tag="act_d", timeout_s=1)
    assert c["b"].now_s == pytest.approx(0.31)
    c["b"].advance(0.3)
    t.send("b", "a", MSG, tag="grad_d")
    t.recv("a", "b", tag="grad_d", timeout_s=1)
    c["a"].advance(0.05)
    assert (c["a"].now_s, c["b"].now_s) == (pytest.approx(0.82), pytest.approx(0.61))
    assert (c["a"].compute_s, c["b"].compute_s) == (pytest.approx(0.3), pytest.approx(0.3))
    assert t.log.recv_wait_s["a"] == pytest.approx(0.72 - 0.2)  # a waited from 0.2 to 0.72


def test_three_micro_batches_over_a_link_slower_than_compute():
    """a: F0..F2 of 0.1 s each, sent at 0.1, 0.2, 0.3; the link takes 0.11 s each, so it is
    busy: act0 0.1 -> 0.21, act1 waits for it 0.21 -> 0.32, act2 0.32 -> 0.43.
    b: F+B 0.2 s each: 0.21-0.41 (grad0 0.41 -> 0.52), 0.41-0.61 (act1 came at 0.32;
    grad1 -> 0.72), 0.61-0.81 (grad2 -> 0.92). a: backward 0.05 s each on arrival:
    0.52-0.57, 0.72-0.77, 0.92-0.97."""
    t, c = _two_devices()
    for _ in range(3):
        c["a"].advance(0.1)
        t.send("a", "b", MSG, tag="act_d")
    arrivals = []
    for _ in range(3):
        t.recv("b", "a", tag="act_d", timeout_s=1)
        arrivals.append(c["b"].now_s)
        c["b"].advance(0.2)
        t.send("b", "a", MSG, tag="grad_d")
    assert arrivals == pytest.approx([0.21, 0.41, 0.61])  # b was busy when act1 and act2 came
    ends = []
    for _ in range(3):
        t.recv("a", "b", tag="grad_d", timeout_s=1)
        c["a"].advance(0.05)
        ends.append(c["a"].now_s)
    assert ends == pytest.approx([0.57, 0.77, 0.97])
    assert c["b"].now_s == pytest.approx(0.81)


def test_a_busy_link_queues_in_each_direction_apart():
    """Two messages sent at once from a at 0: 0 -> 0.11, then 0.11 -> 0.22. b sends one
    at 0.05 the other way: its direction is free, 0.05 -> 0.16. A control message (not a
    step's) is not on the planned link and arrives as sent."""
    t, c = _two_devices()
    t.send("a", "b", MSG, tag="act_d")
    t.send("a", "b", MSG, tag="act_d")
    c["b"].advance(0.05)
    t.send("b", "a", MSG, tag="grad_d")
    t.recv("b", "a", tag="act_d", timeout_s=1)
    assert c["b"].now_s == pytest.approx(0.11)
    t.recv("b", "a", tag="act_d", timeout_s=1)
    assert c["b"].now_s == pytest.approx(0.22)
    t.recv("a", "b", tag="grad_d", timeout_s=1)
    assert c["a"].now_s == pytest.approx(0.16)
    c["b"].advance(0.5)  # b at 0.72 tells a something outside the step
    t.send("b", "a", torch.zeros(1), tag="report")
    t.recv("a", "b", tag="report", timeout_s=1)
    assert c["a"].now_s == pytest.approx(0.72)


def test_a_receiver_ahead_of_the_arrival_does_not_go_back():
    t, c = _two_devices()
    c["b"].advance(5.0)
    t.send("a", "b", MSG, tag="act_d")  # arrives at 0.11
    t.recv("b", "a", tag="act_d", timeout_s=1)
    assert c["b"].now_s == 5.0 and t.log.recv_wait_s["b"] == 0.0


def test_the_clock_counts_this_threads_cpu_not_sleep_nor_other_threads():
    """A block that sleeps 0.3 s, while another thread spins, advances the clock by far
    less than the wall time; a block that spins advances it by about its wall time
    (CPU time of this thread, measured independently by resource's thread usage)."""
    import resource

    c = Clock(factor=3.0, virtual=True)
    stop = threading.Event()
    spinner = threading.Thread(target=lambda: [None for _ in iter(stop.is_set, True)], daemon=True)
    spinner.start()
    try:
        with c.compute("sleeps"):
            time.sleep(0.3)
    finally:
        stop.set()
        spinner.join(5)
    assert c.now_s < 0.05 * 3  # 0.3 s of wall, well under 0.05 s of CPU
    before = c.now_s
    r0 = resource.getrusage(resource.RUSAGE_THREAD)
    with c.compute("spins"):
        end = time.thread_time() + 0.05
        while time.thread_time() < end:
            pass
    r1 = resource.getrusage(resource.RUSAGE_THREAD)
    used = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    assert c.now_s - before == pytest.approx(3.0 * used, abs=3.0 * 0.01)  # rusage ticks are coarser
    assert c.work_s == pytest.approx(c.now_s / 3.0)


def _fixed_work(monkeypatch, seconds: float) -> None:
    """Every compute block of every thread takes exactly ``seconds`` of CPU."""
    counters = threading.local()

    def cpu_time() -> float:
        v = getattr(counters, "v", 0.0)
        counters.v = v + seconds
        return v

    monkeypatch.setattr(clock_module, "cpu_time", cpu_time)


@pytest.mark.slow
def test_a_training_run_is_deterministic_and_as_computed_by_hand(tmp_path, monkeypatch):
    """Three stages, M = 2, every compute block 0.01 s (links at 1e12 bytes/s take ~0).
    Phase d, every device GPipe's F0 F1 B0 B1: d0 F0 .00-.01, F1 .01-.02; d1 F0 .01-.02,
    F1 .02-.03; d2 F0 .02-.03, F1 .03-.04, B0 .04-.05, B1 .05-.06; d1 B0 .05-.06, B1
    .06-.07; d0 B0 .06-.07, B1 .07-.08. Phase g from .08 the same: the chain ends at .16 s
    (SPEC §2.1: three units of .04 s, .12 + (M - 1) x .04). The server's step adds its
    generator's forward and backward: .18 s a step, 2 steps a round."""
    _fixed_work(monkeypatch, 0.01)
    plan = chain_plan("dcgan", [2, 6], micro_batches=2)
    runs = [run(tmp_path, plan, f"r{i}", rounds=2, steps_per_round=2, emulate="virtual") for i in range(2)]
    for a, b in zip(*runs):
        assert a["round_time_s"] == b["round_time_s"] and a["clients"] == b["clients"]
        assert {d: v["compute_s"] for d, v in a["devices"].items()} == {d: v["compute_s"] for d, v in b["devices"].items()}
        assert a["clients"]["client0"]["step_time_s"] == pytest.approx(0.16, abs=1e-5)
        assert a["round_time_s"] == pytest.approx(2 * 0.18, abs=1e-5)
        # d0: 2 F + 2 B per phase; d1 the same; d2 F and B per micro-batch: 8 blocks of 0.01 s each
        assert all(v["compute_s"] == pytest.approx(0.08) for v in a["devices"].values())
    events = json.loads((tmp_path / "r0" / "timeline.json").read_text())["events"]
    d1 = [e["label"] for e in sorted(events, key=lambda e: e["start_s"]) if e["row"] == "c0-d1" and e["label"][1] == "d"]
    assert d1 == ["Fd0", "Fd1", "Bd0", "Bd1"]
    d2 = [e["label"] for e in sorted(events, key=lambda e: e["start_s"]) if e["row"] == "c0-d2" and e["label"][1] == "d"]
    assert d2 == ["Fd0", "Fd1", "Bd0", "Bd1"]


@pytest.mark.slow
def test_a_deadline_is_kept_in_virtual_time(tmp_path, monkeypatch):
    """Each step of the chain above takes .16 s after the server's .01 s forward, and its
    gradient arrives .17 s into the step; with a deadline of 0.3 s for 2 steps the first
    step (due at .15) already misses it: the client is dropped at step 0, whatever the host's speed."""
    _fixed_work(monkeypatch, 0.01)
    plan = chain_plan("dcgan", [2, 6], micro_batches=2)
    m = run(tmp_path, plan, "late", rounds=1, steps_per_round=2, emulate="virtual", deadline_s=0.3)[0]
    assert m["clients"]["client0"]["dropped_at_step"] == 0
    m = run(tmp_path, plan, "in-time", rounds=1, steps_per_round=2, emulate="virtual", deadline_s=0.4)[0]
    assert m["clients"]["client0"]["dropped_at_step"] is None


@pytest.mark.slow
def test_a_slowdown_multiplies_virtual_compute(tmp_path, monkeypatch):
    """The chain above with c0-d1 three times slower from round 2 (its blocks .03 s).
    Phase d: d0 F .00-.02; d1 F0 .01-.04, F1 .04-.07; d2 F0 .04-.05, F1 .07-.08, then
    B0 .08-.09, B1 .09-.10; d1 B0 .09-.12, B1 .12-.15; d0 B0 .12-.13, B1 .15-.16. Phase g
    the same from .16: the step is .32 s, as SPEC §2.1's line of units has it (units of
    .04, .12, .04 s: .20 + (M - 1) x .12); d1's compute .24 s a step for the same CPU work."""
    _fixed_work(monkeypatch, 0.01)
    plan = chain_plan("dcgan", [2, 6], micro_batches=2)
    rows = run(tmp_path, plan, "slow", rounds=2, steps_per_round=2, emulate="virtual",
               slowdown=(("c0-d1", 3.0, 2),))
    assert [r["devices"]["c0-d1"]["compute_s"] for r in rows] == [pytest.approx(0.08), pytest.approx(0.24)]
    assert rows[1]["devices"]["c0-d1"]["work_s"] == pytest.approx(rows[0]["devices"]["c0-d1"]["work_s"])  # same work
    steps = [r["clients"]["client0"]["step_time_s"] for r in rows]
    assert steps == [pytest.approx(0.16, abs=1e-5), pytest.approx(0.32, abs=1e-5)]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["local", "dist"])
def test_stamps_carry_each_devices_time_to_the_next(tmp_path, backend):
    """With M = 1 a step is one device after another, so a client's step (on its data
    device's clock) is the sum of every device's compute in the step (each measured on its
    own thread or process) plus its links' time, here ~1e-7 s (1e12 bytes/s). Without the
    stamps crossing processes the data device would see only its own compute."""
    plan = chain_plan("dcgan", [2, 6])
    m = run(tmp_path, plan, backend, rounds=1, steps_per_round=2, emulate="virtual", backend=backend)[0]
    total = sum(d["compute_s"] for d in m["devices"].values())
    assert m["clients"]["client0"]["step_time_s"] == pytest.approx(total, rel=1e-4)
    assert m["clients"]["client0"]["step_time_s"] > 2 * m["devices"]["c0-d0"]["compute_s"]
