"""A device's compute time, measured, and under emulation stretched to the device's speed.

Three ways to emulate (``--emulate``):

- ``virtual``: nothing sleeps. Each role keeps its own clock, ``now_s``, in seconds of
  the emulated world. A compute block advances it by the CPU time of the thread that ran
  it (``time.thread_time``: other threads and other programs on this host do not count)
  times the device's factor; a message carries its virtual arrival and its receiver's
  clock moves to it if it is behind (Lamport's clocks, 1978; the links' occupancy is
  ``trainer.transport``'s). Measured times are then functions of the work done, not of
  this host's load.
- ``sleep``: the device's work, measured in wall time, is stretched by sleeping.
- ``none``: the work as it runs here.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

from planner.profile import PROFILE_THREADS, torch_threads

# A device is one core of this host: it computes on the torch threads its plan's profile was
# timed on (both backends and ``fsl calibrate``), so its work is what the tables say.
DEVICE_THREADS = PROFILE_THREADS


def paced_sleep(seconds: float, debt: float) -> float:
    """Sleep ``seconds`` less what earlier sleeps overslept (``debt``); returns the new debt.

    ``time.sleep`` wakes late (the scheduler, the GIL), by ~0.1-1 ms a call; over the
    dozens of sleeps of one emulated step that drift would add up, so each sleep pays
    back what the one before overslept.
    """
    want = max(seconds, 0.0) - debt
    if want <= 0:
        return -want
    t0 = time.perf_counter()
    time.sleep(want)
    return max(time.perf_counter() - t0 - want, 0.0)


def cpu_time() -> float:
    """Seconds of CPU this thread has used (``--emulate virtual``'s measure of work)."""
    return time.thread_time()


@dataclass
class Clock:
    """Times a device's work; under emulation the device then takes ``factor`` x that time.

    ``lock`` (local backend) lets one device compute at a time, so the work measured
    is what the profile measured, not two devices fighting over two cores (virtual: a
    thread sharing a core inflates even CPU time, through the caches: ``benchmarks/
    scale_sim.py``'s 100 clients took 248 s of CPU concurrently, 198 s with the lock). Waiting for
    the lock is this host's artefact, not the emulated device's: under emulation the
    wait is taken out of the slowdown's sleep, so a compute phase ends ``factor`` x
    ``work`` after the device was ready to start, unless the host's cores were busy for
    longer than that. What they could not hide is ``host_wait_s``.
    """

    factor: float = 1.0  # processing_time_factor of the device
    emulate: bool = False  # --emulate sleep
    virtual: bool = False  # --emulate virtual: no sleeping, the clock advances by CPU time x factor
    now_s: float = 0.0  # virtual: this role's time in the emulated world
    lock: threading.Lock | None = None
    work_s: float = 0.0  # raw seconds of work on this machine
    compute_s: float = 0.0  # work x factor under emulation, else work: the device's compute time
    codec_s: float = 0.0  # like compute_s, for encoding and decoding what crosses a cut
    lock_wait_s: float = 0.0  # seconds spent waiting for another device to finish computing
    host_wait_s: float = 0.0  # the part of lock_wait_s the emulated slowdown could not absorb
    sleep_debt_s: float = 0.0  # how much the last sleep overslept (paced_sleep)
    trace: list | None = None  # if a list: (label, start, end) of each labelled phase, perf_counter

    @contextmanager
    def compute(self, label: str | None = None, *, codec: bool = False):
        """Time the block as this device's work (``codec``: as encoding or decoding)."""
        if self.virtual:
            with self._virtual(label, codec):
                yield
            return
        t_ask = time.perf_counter()
        if self.lock is not None:
            self.lock.acquire()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            t1 = time.perf_counter()
            if self.lock is not None:
                self.lock.release()
            work, waited = t1 - t0, t0 - t_ask
            self.work_s += work
            self.lock_wait_s += waited
            if self.emulate:
                extra = max(self.factor - 1.0, 0.0) * work  # a factor below 1 runs at this host's speed
                spent = work + extra
                self.host_wait_s += max(waited - extra, 0.0)
                self.sleep_debt_s = paced_sleep(extra - waited, self.sleep_debt_s)
            else:
                spent = work
                self.host_wait_s += waited
            if codec:
                self.codec_s += spent
            else:
                self.compute_s += spent
            if self.trace is not None and label is not None:
                self.trace.append((label, t_ask, time.perf_counter()))

    @contextmanager
    def _virtual(self, label: str | None, codec: bool):
        """The block's CPU time on this thread, x ``factor``, added to ``now_s``."""
        if self.lock is not None:
            self.lock.acquire()
        start, c0 = self.now_s, cpu_time()
        try:
            yield
        finally:
            work = cpu_time() - c0
            if self.lock is not None:
                self.lock.release()
            self.advance(work, label=label, codec=codec, start=start)

    def advance(self, work_s: float, *, label: str | None = None, codec: bool = False,
                start: float | None = None) -> None:
        """Virtual: the device did ``work_s`` seconds of this host's work (its time is
        ``factor`` x that). Tests call it with literal durations."""
        start = self.now_s if start is None else start
        spent = work_s * self.factor
        self.work_s += work_s
        self.now_s = start + spent
        if codec:
            self.codec_s += spent
        else:
            self.compute_s += spent
        if self.trace is not None and label is not None:
            self.trace.append((label, start, self.now_s))

    def time_s(self) -> float:
        """This role's time: virtual under ``--emulate virtual``, else the host's."""
        return self.now_s if self.virtual else time.perf_counter()

    def reset(self) -> None:
        self.work_s = self.compute_s = self.codec_s = self.lock_wait_s = self.host_wait_s = self.sleep_debt_s = 0.0


def device_threads():
    """Torch computes with :data:`DEVICE_THREADS` threads inside (as before, after): a
    thread of the local backend computing as one device."""
    return torch_threads(DEVICE_THREADS)
