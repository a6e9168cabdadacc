"""Device emulation: a compute phase lasts factor x work from when the device was ready,
however long this host made it wait for its cores, and oversleeping does not add up; a
link carries its messages in turn, apart from the sender.

Compute's time is a fake clock here, so every figure is exact and no test depends on
this machine's load; the link tests assert only what a busy machine cannot change.
"""

from __future__ import annotations

import time

import pytest
import torch

import trainer.roles.clock as clock_module
import trainer.comm.transport as transport
from trainer.roles.clock import Clock
from trainer.roles.clock import paced_sleep


class FakeTime:
    """``perf_counter`` and ``sleep`` on a clock that moves only when told; every sleep
    wakes ``oversleep`` seconds late, as a loaded scheduler would."""

    def __init__(self, oversleep: float = 0.0):
        self.now, self.oversleep, self.slept = 0.0, oversleep, []

    def perf_counter(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        assert s >= 0
        self.slept.append(s)
        self.now += s + self.oversleep


class BusyHostLock:
    """A lock another device holds for ``wait`` seconds each time this one asks."""

    def __init__(self, clock: FakeTime, wait: float):
        self.clock, self.wait = clock, wait

    def acquire(self) -> None:
        self.clock.now += self.wait

    def release(self) -> None:
        pass


@pytest.fixture
def fake(monkeypatch):
    t = FakeTime()
    monkeypatch.setattr(clock_module, "time", t)
    return t


def phase(clock: Clock, t: FakeTime, work: float) -> float:
    """One compute phase of ``work`` seconds; returns its wall time."""
    start = t.now
    with clock.compute():
        t.now += work
    return t.now - start


@pytest.mark.parametrize("wait, wall, host_wait", [
    (0.00, 0.08, 0.00),  # nobody in the way: work 20 ms, then sleep 60 ms
    (0.05, 0.08, 0.00),  # 50 ms waiting for the host is hidden in the 60 ms of slowdown
    (0.06, 0.08, 0.00),  # exactly hidden
    (0.10, 0.12, 0.04),  # the host was busier than the device is slow: 40 ms show
])
def test_host_wait_is_taken_out_of_the_slowdown(fake, wait, wall, host_wait):
    clock = Clock(factor=4.0, emulate=True, lock=BusyHostLock(fake, wait))
    assert phase(clock, fake, 0.02) == pytest.approx(wall)
    assert clock.work_s == pytest.approx(0.02)
    assert clock.compute_s == pytest.approx(0.08)  # the emulated device's time: factor x work
    assert clock.lock_wait_s == pytest.approx(wait)
    assert clock.host_wait_s == pytest.approx(host_wait)


def test_without_emulation_every_wait_shows(fake):
    clock = Clock(factor=4.0, emulate=False, lock=BusyHostLock(fake, 0.05))
    assert phase(clock, fake, 0.02) == pytest.approx(0.07)
    assert clock.compute_s == pytest.approx(0.02)
    assert clock.host_wait_s == pytest.approx(0.05)
    assert fake.slept == []


def test_oversleeping_does_not_accumulate(fake):
    fake.oversleep = 0.002  # every sleep wakes 2 ms late
    clock = Clock(factor=2.0, emulate=True)
    total = sum(phase(clock, fake, 0.01) for _ in range(50))
    # unpaced, 50 sleeps would add 100 ms; paced, only the last one's 2 ms remains
    assert total == pytest.approx(50 * 0.02 + 0.002)
    assert clock.sleep_debt_s == pytest.approx(0.002)


def test_paced_sleep_pays_back_debt_before_sleeping(fake):
    assert paced_sleep(0.003, 0.005) == pytest.approx(0.002)  # all debt, no sleep
    assert fake.slept == []
    assert paced_sleep(0.010, 0.002) == pytest.approx(0.0)
    assert fake.slept == [pytest.approx(0.008)]
    assert paced_sleep(-1.0, 0.001) == pytest.approx(0.001)  # nothing to sleep: debt kept


def test_a_link_carries_messages_in_turn_while_the_sender_goes_on():
    """The link, not the sender, takes a message's time: send returns at once, each
    message ends 10 ms after the one before (the link is busy), and they arrive in order,
    none before its end. Real time, but only lower bounds on it are asserted."""
    links = transport.LinkTable(bytes_per_s={("a", "b"): 1e6}, latency_s={("a", "b"): 0.0})
    t = transport.InProcessTransport(links, emulate=True)
    t0 = time.perf_counter()
    spans = [t.send("a", "b", torch.full((2500,), float(k)), tag="act_d") for k in range(20)]  # 10 ms each
    returned = time.perf_counter()
    assert [e - spans[0][0] for _, e in spans] == pytest.approx([0.01 * (k + 1) for k in range(20)])
    assert spans[-1][1] > returned  # the sender was not held for the 200 ms the link takes
    for k in range(20):
        assert t.recv("b", "a", tag="act_d", timeout_s=5)[0].item() == k
        assert time.perf_counter() >= spans[k][1]
    assert time.perf_counter() - t0 >= 0.2
    t.close(timeout_s=5)


def test_only_a_steps_messages_take_a_links_time():
    """Checkpoint state and reports are not planned, so they are not delayed, but they
    keep their place behind what the link carries."""
    links = transport.LinkTable(bytes_per_s={("a", "b"): 1e6}, latency_s={("a", "b"): 0.004})
    t = transport.InProcessTransport(links, emulate=True)
    for tag in ("state", "report"):
        start, end = t.send("a", "b", torch.zeros(2500), tag=tag)
        assert end == start
    start, grad_end = t.send("a", "b", torch.zeros(2500), tag="grad_g")  # 10 ms of bytes + a quarter of the latency
    assert grad_end - start == pytest.approx(0.011)
    start, end = t.send("a", "b", torch.zeros(1), tag="report")
    assert start == end == grad_end  # queued behind grad_g
    assert [t.recv("b", "a", tag=tag, timeout_s=5).numel() for tag in ("state", "report", "grad_g", "report")] \
        == [2500, 2500, 2500, 1]
    t.close(timeout_s=5)
