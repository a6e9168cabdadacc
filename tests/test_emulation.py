"""Device emulation: a compute phase lasts factor x work from when the device was ready,
however long this host made it wait for its cores, and oversleeping does not add up.

Time is a fake clock here, so every figure is exact and no test depends on this
machine's load.
"""

from __future__ import annotations

import pytest
import torch

import trainer.clock as clock_module
import trainer.transport as transport
from trainer.clock import Clock
from trainer.transport import paced_sleep


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
    monkeypatch.setattr(transport, "time", t)
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


def test_link_sleeps_are_paced_per_sender(fake):
    fake.oversleep = 0.001
    links = transport.LinkTable(bytes_per_s={("a", "b"): 1e6}, latency_s={("a", "b"): 0.0})
    t = transport.InProcessTransport(links, emulate=True)
    start = fake.now
    for _ in range(20):
        t.send("a", "b", torch.zeros(2500), tag="act_d")  # 10,000 bytes at 1 MB/s: 10 ms each
    assert fake.now - start == pytest.approx(20 * 0.01 + 0.001)


def test_only_a_steps_messages_cross_emulated_links(fake):
    """Checkpoint state and reports are not planned, so they are not delayed."""
    links = transport.LinkTable(bytes_per_s={("a", "b"): 1e6}, latency_s={("a", "b"): 0.004})
    t = transport.InProcessTransport(links, emulate=True)
    t.send("a", "b", torch.zeros(2500), tag="state")
    t.send("a", "b", torch.zeros(2500), tag="report")
    assert fake.slept == []
    t.send("a", "b", torch.zeros(2500), tag="grad_g")  # 10 ms of bytes + a quarter of the latency
    assert fake.slept == [pytest.approx(0.011)]
