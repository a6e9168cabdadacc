"""The server's role: the generator, and the weighted combination of the clients' feedback.

Each step the server draws ``z``, sends ``fake = G(z)`` to every active client's data
device, waits for each client's gradient w.r.t. ``fake`` (and its losses from the last
device), and steps the generator on the clients' combined feedback, over the clients that
answered (``--feedback``):

- ``mean`` (default): ``sum_c w_c * fake_grad_c / sum_c w_c``, ``w_c`` the client's
  ``data_weight`` (MD-GAN, Hardy et al. 2019);
- ``sum``: ``sum_c fake_grad_c``, unweighted, as the seed's code sums its discriminators'
  generator losses. With equal weights this is K x ``mean``, and Adam's step
  ``m / (sqrt(v) + eps)`` does not change when every gradient is scaled by K (up to
  ``eps``), so the two differ only where the weights differ.

With a deadline, a client that has not answered in time is dropped for the rest of the
round and its devices are told to stop at once. Under ``--emulate virtual`` the deadline
is in virtual time: the server waits for the gradient and drops the client if it arrived
(virtually) too late.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from planner.schedule import FAKE, FAKE_GRAD, LOSSES
from trainer.roles.clock import Clock
from trainer.errors import Diverged, PeerTimeout
from trainer.comm.transport import SERVER, Transport


def _finite(x: torch.Tensor, step: int, what: str) -> None:
    """Diverged (a run's outcome, exit 1) when ``x`` holds a NaN or an infinity."""
    if not bool(torch.isfinite(x).all()):
        raise Diverged(f"step {step + 1}: {what} {'is' if x.numel() == 1 else 'are'} not finite "
                       f"({x.flatten()[:4].tolist()}{'…' if x.numel() > 4 else ''})")


@dataclass
class ClientView:
    name: str
    devices: tuple[str, ...]  # the chain, data device first
    weight: float

    @property
    def data_device(self) -> str:
        return self.devices[0]

    @property
    def last_device(self) -> str:
        return self.devices[-1]


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
    feedback: str = "mean"  # mean: data_weight-weighted mean of the clients' gradients; sum: their sum
    losses: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)  # client -> step it was dropped at
    clock: Clock = field(default_factory=Clock)
    ema: torch.nn.Module | None = None  # --g-ema: a moving average of the generator's weights
    ema_decay: float = 0.0

    def _drop(self, t: Transport, c: ClientView, step: int) -> None:
        """Stop ``c``'s devices now: they end the round and wait for the next one."""
        self.dropped[c.name] = step
        for d in c.devices:
            t.send(SERVER, d, torch.zeros(0), tag="stop")

    def step(self, t: Transport, step: int, round_start: float, steps: int) -> None:
        active = [c for c in self.clients if c.name not in self.dropped]
        with self.clock.compute("G forward"):
            z = torch.randn(self.batch_size, self.generator.z_dim, generator=self.z_generator)
            fake = self.generator(z)
        _finite(fake, step, "the generator's output")
        for c in active:
            t.send(SERVER, c.data_device, fake, tag=FAKE.tag)
        grads = {}
        due = None if self.deadline_s is None else round_start + self.deadline_s * (step + 1) / steps
        for c in active:
            timeout = self.timeout_s
            if due is not None and not self.clock.virtual:
                left = max(due - time.perf_counter(), 1e-3)
                timeout = left if timeout is None else min(left, timeout)
            before = self.clock.now_s
            try:
                grads[c.name] = t.recv(SERVER, c.data_device, tag=FAKE_GRAD.tag, timeout_s=timeout)
            except PeerTimeout:
                if self.deadline_s is None:
                    raise
                self._drop(t, c, step)
                continue
            if due is not None and self.clock.virtual and self.clock.now_s > due:  # arrived after the deadline
                self.clock.now_s = max(before, due)  # the server waited until the deadline, no longer
                del grads[c.name]
                self._drop(t, c, step)
                continue
            losses = t.recv(SERVER, c.last_device, tag=LOSSES, timeout_s=self.timeout_s)
            _finite(losses, step, f"client {c.name}'s losses (d, g)")
            _finite(grads[c.name], step, f"client {c.name}'s feedback to the generator")
            d_loss, g_loss = losses.tolist()
            self.losses.setdefault(c.name, []).append((d_loss, g_loss))
        if not grads:
            return
        with self.clock.compute("G backward"):
            g = self.combine(grads, active)
            self.optimizer.zero_grad(set_to_none=True)
            fake.backward(g)
            self.optimizer.step()
            if self.ema is not None:
                with torch.no_grad():
                    for e, p in zip(self.ema.parameters(), self.generator.parameters()):
                        e.lerp_(p, 1.0 - self.ema_decay)
                    for e, b in zip(self.ema.buffers(), self.generator.buffers()):
                        e.copy_(b)

    @property
    def sampler(self) -> torch.nn.Module:
        """What samples and quality are drawn from: the moving average (``--g-ema``) or G."""
        return self.ema if self.ema is not None else self.generator

    def combine(self, grads: dict[str, torch.Tensor], active: list[ClientView]) -> torch.Tensor:
        """The generator's feedback from the clients' gradients, summed in client order."""
        if self.feedback == "sum":
            return sum(grads[c.name] for c in active if c.name in grads)
        weights = {c.name: c.weight for c in active if c.name in grads}
        total = sum(weights.values())
        return sum(grads[n] * (w / total) for n, w in weights.items())

    def run(self, t: Transport, steps: int, *, trace_last: bool = False, on_step=None) -> list:
        """One round of ``steps`` steps; with ``trace_last``, returns the last step's
        ``(row, label, start, end)`` (the clock's seconds); ``on_step(i)`` after step ``i``."""
        self.dropped, self.losses = {}, {}
        self.clock.reset()
        start = self.clock.time_s()  # virtual under --emulate virtual: so is the deadline
        for i in range(steps):
            if trace_last and i == steps - 1:
                self.clock.trace = []
            self.step(t, i, start, steps)
            if on_step is not None:
                on_step(i)
        for name, p in self.generator.named_parameters():  # nothing non-finite is evaluated or saved
            _finite(p.detach(), steps - 1, f"the generator's weights ({name})")
        trace = [(SERVER, *x) for x in self.clock.trace or []]
        self.clock.trace = None
        return trace

    def late_devices(self) -> set[str]:
        """Devices of the clients dropped this round: their late step messages are expected."""
        return {d for c in self.clients if c.name in self.dropped for d in c.devices}
