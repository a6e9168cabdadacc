"""One training step, written once per role; the transport decides where roles run.

Message schedule of one step for a client whose discriminator is split over devices
``d0`` (holds the data) -> ``d1`` -> ``d2``; the server holds the generator ``G``::

    server            d0                    d1                    d2 (last)
      | fake = G(z)    |                     |                     |
      |---- fake ----->| x = [real ; fake]   |                     |
      |                |--- act_d (2B) ----->|--- act_d (2B) ----->| D loss
      |                |<-- grad_d ----------|<-- grad_d ----------| backward
      |                | Adam step           | Adam step           | Adam step
      |                |--- act_g (B) ------>|--- act_g (B) ------>| G loss
      |                |<-- grad_g ----------|<-- grad_g ----------|
      |<- fake_grad ---|                     |                     |
      |<------------------------ losses [d_loss, g_loss] ----------|
      | G step on sum_c w_c * fake_grad_c / sum_c w_c

Real images never leave ``d0``: only the activation of its first segment does. The
generator phase uses the discriminator as updated in the same step, like DCGAN.
Losses: discriminator ``BCE(D(real), 1) + BCE(D(fake), 0)``; generator the
non-saturating ``BCE(D(G(z)), 1)``, weighted over clients by ``data_weight`` (MD-GAN).
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from trainer.transport import SERVER, PeerTimeout, StopRound, Transport, paced_sleep


@dataclass
class Clock:
    """Times a device's work; under emulation the device then takes ``factor`` x that time.

    ``lock`` (local backend) lets one device compute at a time, so the work measured
    is what the profile measured, not two devices fighting over two cores. Waiting for
    the lock is this host's artefact, not the emulated device's: under emulation the
    wait is taken out of the slowdown's sleep, so a compute phase ends ``factor`` x
    ``work`` after the device was ready to start, unless the host's cores were busy for
    longer than that. What they could not hide is ``host_wait_s``.
    """

    factor: float = 1.0  # processing_time_factor of the device
    emulate: bool = False
    lock: threading.Lock | None = None
    work_s: float = 0.0  # raw seconds of work on this machine
    compute_s: float = 0.0  # work x factor under emulation, else work: the device's compute time
    lock_wait_s: float = 0.0  # seconds spent waiting for another device to finish computing
    host_wait_s: float = 0.0  # the part of lock_wait_s the emulated slowdown could not absorb
    sleep_debt_s: float = 0.0  # how much the last sleep overslept (paced_sleep)

    @contextmanager
    def compute(self):
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
                self.compute_s += work + extra
                self.host_wait_s += max(waited - extra, 0.0)
                self.sleep_debt_s = paced_sleep(extra - waited, self.sleep_debt_s)
            else:
                self.compute_s += work
                self.host_wait_s += waited

    def reset(self) -> None:
        self.work_s = self.compute_s = self.lock_wait_s = self.host_wait_s = self.sleep_debt_s = 0.0


@dataclass
class DeviceRole:
    """One device of one client: a segment of that client's discriminator."""

    name: str
    client: str
    stage: torch.nn.Module
    optimizer: torch.optim.Optimizer | None  # None when the stage has no parameters
    prev: str | None  # None: this device holds the data
    next: str | None  # None: this device computes the loss
    batch_size: int
    sampler: object | None = None  # ShardSampler on the data device
    clock: Clock = field(default_factory=Clock)
    timeout_s: float | None = None
    chain_s: float = 0.0  # data device: seconds from fake received to fake_grad sent
    steps_done: int = 0

    def _recv(self, t: Transport, src: str, tag: str) -> torch.Tensor:
        return t.recv(self.name, src, tag=tag, timeout_s=self.timeout_s)

    def _through(self, t: Transport, x: torch.Tensor, phase: str, *, input_grad: bool,
                 labels: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Forward this segment, hand on, take the gradient back, backward. Returns
        (gradient for the input or None, loss if this device is last)."""
        params = list(self.stage.parameters()) if phase == "d" else []
        with self.clock.compute():
            x = x.detach().requires_grad_(input_grad)
            out = self.stage(x)
            loss = None
            if self.next is None:
                loss = F.binary_cross_entropy_with_logits(out.squeeze(1), labels, reduction="none")
                loss = loss.view(-1, len(labels) // (2 if phase == "d" else 1)).mean(1).sum()
        if self.next is not None:
            t.send(self.name, self.next, out, tag=f"act_{phase}")
            g_out = self._recv(t, self.next, f"grad_{phase}")
        with self.clock.compute():
            wrt = params + ([x] if input_grad else [])
            grads = torch.autograd.grad(loss if loss is not None else out, wrt,
                                        None if loss is not None else g_out) if wrt else ()
            for p, g in zip(params, grads):
                p.grad = g
            if phase == "d" and self.optimizer is not None:
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        return (grads[-1] if input_grad else None), loss

    def step(self, t: Transport) -> None:
        B = self.batch_size
        # discriminator phase
        if self.prev is None:
            real = self.sampler.next_batch()
            fake = self._recv(t, SERVER, "fake")
            t_chain = time.perf_counter()
            x = torch.cat([real, fake])
        else:
            x = self._recv(t, self.prev, "act_d")
        labels = torch.cat([torch.ones(B), torch.zeros(B)])
        g_in, d_loss = self._through(t, x, "d", input_grad=self.prev is not None, labels=labels)
        if self.prev is not None:
            t.send(self.name, self.prev, g_in, tag="grad_d")
        # generator phase
        x = fake if self.prev is None else self._recv(t, self.prev, "act_g")
        g_in, g_loss = self._through(t, x, "g", input_grad=True, labels=torch.ones(B))
        t.send(self.name, self.prev or SERVER, g_in, tag="grad_g" if self.prev else "fake_grad")
        if self.prev is None:
            self.chain_s += time.perf_counter() - t_chain
        self.steps_done += 1
        if self.next is None:
            t.send(self.name, SERVER, torch.stack([d_loss.detach(), g_loss.detach()]), tag="losses")

    def run(self, t: Transport, steps: int) -> int:
        """Run ``steps`` steps or until told to stop; returns the steps done."""
        self.clock.reset()
        self.chain_s, self.steps_done = 0.0, 0
        for i in range(steps):
            try:
                self.step(t)
            except StopRound:
                if self.next is not None:
                    t.send(self.name, self.next, torch.zeros(0), tag="stop")
                return i
        return steps


@dataclass
class ClientView:
    name: str
    data_device: str
    last_device: str
    weight: float


@dataclass
class ServerRole:
    """The generator and the weighted combination of the clients' gradients."""

    generator: torch.nn.Module
    optimizer: torch.optim.Optimizer
    clients: list[ClientView]
    batch_size: int
    z_generator: torch.Generator
    deadline_s: float | None = None  # per round: clients slower than this are dropped
    timeout_s: float | None = None  # a peer silent this long is a failure
    losses: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)  # client -> step it was dropped at
    clock: Clock = field(default_factory=Clock)

    def _release(self, t: Transport, c: ClientView) -> None:
        """Collect a dropped client's late answers, then tell its chain to stop."""
        t.recv(SERVER, c.data_device, tag="fake_grad", timeout_s=self.timeout_s)
        t.recv(SERVER, c.last_device, tag="losses", timeout_s=self.timeout_s)
        t.send(SERVER, c.data_device, torch.zeros(0), tag="stop")

    def step(self, t: Transport, step: int, round_start: float, steps: int) -> None:
        active = [c for c in self.clients if c.name not in self.dropped]
        with self.clock.compute():
            z = torch.randn(self.batch_size, self.generator.z_dim, generator=self.z_generator)
            fake = self.generator(z)
        for c in active:
            t.send(SERVER, c.data_device, fake, tag="fake")
        grads, late = {}, []
        for c in active:
            timeout = self.timeout_s
            if self.deadline_s is not None:
                left = round_start + self.deadline_s * (step + 1) / steps - time.perf_counter()
                timeout = max(left, 1e-3) if timeout is None else min(max(left, 1e-3), timeout)
            try:
                grads[c.name] = t.recv(SERVER, c.data_device, tag="fake_grad", timeout_s=timeout)
            except PeerTimeout:
                if self.deadline_s is None:
                    raise
                late.append(c)
                continue
            d_loss, g_loss = t.recv(SERVER, c.last_device, tag="losses", timeout_s=self.timeout_s).tolist()
            self.losses.setdefault(c.name, []).append((d_loss, g_loss))
        for c in late:
            self.dropped[c.name] = step
        if not grads:
            return
        weights = {c.name: c.weight for c in active if c.name in grads}
        total = sum(weights.values())
        with self.clock.compute():
            g = sum(grads[n] * (w / total) for n, w in weights.items())
            self.optimizer.zero_grad(set_to_none=True)
            fake.backward(g)
            self.optimizer.step()

    def run(self, t: Transport, steps: int) -> None:
        """One round of ``steps`` steps; clients dropped on the way are released at the end."""
        self.dropped, self.losses = {}, {}
        self.clock.reset()
        start = time.perf_counter()
        for i in range(steps):
            self.step(t, i, start, steps)
        for c in self.clients:
            if c.name in self.dropped:
                self._release(t, c)
