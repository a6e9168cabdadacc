"""One training step, written once per role; the transport decides where roles run.

The messages of a step are ``planner.schedule``'s (drawn there). A device's step::

    d0 (data):  real, fake <- server | forward [real; fake] | act_d -> d1 ... grad_d <- d1
                backward, Adam step | forward fake | act_g -> d1 ... grad_g <- d1 | fake_grad -> server
    di:         act_d <- d(i-1) | forward | act_d -> d(i+1) ... | backward, Adam | grad_d -> d(i-1)
                act_g <- d(i-1) | forward | act_g -> d(i+1) ... | backward      | grad_g -> d(i-1)
    dk (last):  as di, but the loss instead of a next device; losses -> server

Real images never leave ``d0``: only the activation of its first segment does. The
generator phase uses the discriminator as updated in the same step, like DCGAN.
Losses: discriminator ``BCE(D(real), 1) + BCE(D(fake), 0)``; generator the
non-saturating ``BCE(D(G(z)), 1)``; the server's generator step follows
``sum_c w_c * fake_grad_c / sum_c w_c`` over the clients that answered, ``w_c`` the
client's ``data_weight`` (MD-GAN).
"""

from __future__ import annotations

import time
from dataclasses import astuple, dataclass, field, fields

import torch
import torch.nn.functional as F

from planner.schedule import CUT_MESSAGES, FAKE, FAKE_GRAD, LOSSES
from trainer.clock import Clock
from trainer.errors import PeerTimeout, StopRound
from trainer.transport import SERVER, Transport

ACT = {m.phase: m.tag for m in CUT_MESSAGES if m.direction == "forward"}  # phase -> activation tag
GRAD = {m.phase: m.tag for m in CUT_MESSAGES if m.direction == "backward"}  # phase -> gradient tag


@dataclass
class DeviceReport:
    """What a device tells the server after each round (sums over the round's steps)."""

    compute_s: float  # the device's compute time (emulated under --emulate sleep)
    work_s: float  # seconds of real work on this host
    host_wait_s: float  # waiting for this host's cores beyond what emulation hides
    wait_s: float  # waiting in recv for peers
    bytes_sent: float  # a step's messages (what the plan predicts)
    bytes_received: float
    control_bytes_sent: float  # everything else: aggregation, reports
    control_bytes_received: float
    steps_done: float
    chain_s: float  # data device: seconds from fake received to fake_grad sent

    def to_tensor(self) -> torch.Tensor:
        return torch.tensor(astuple(self), dtype=torch.float64)

    @classmethod
    def from_tensor(cls, t: torch.Tensor) -> "DeviceReport":
        values = t.tolist()
        if len(values) != len(fields(cls)):
            raise ValueError(f"a report has {len(fields(cls))} values, found {len(values)}")
        return cls(*values)


@dataclass
class DeviceRole:
    """One device of one client: a segment of that client's discriminator."""

    name: str
    client: str
    stage: torch.nn.Module  # planner.models.Segment
    optimizer: torch.optim.Optimizer | None  # None: the stage has no parameters
    prev: str | None  # None: this device holds the data
    next: str | None  # None: this device computes the loss
    batch_size: int
    sampler: object | None = None  # ShardSampler on the data device
    clock: Clock = field(default_factory=Clock)
    timeout_s: float | None = None
    chain_s: float = 0.0
    steps_done: int = 0

    def _recv(self, t: Transport, src: str, tag: str) -> torch.Tensor:
        return t.recv(self.name, src, tag=tag, timeout_s=self.timeout_s, stoppable=True)

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
            t.send(self.name, self.next, out, tag=ACT[phase])
            g_out = self._recv(t, self.next, GRAD[phase])
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
        if self.prev is None:  # discriminator phase
            real = self.sampler.next_batch()
            fake = self._recv(t, SERVER, FAKE.tag)
            t_chain = time.perf_counter()
            x = torch.cat([real, fake])
        else:
            x = self._recv(t, self.prev, ACT["d"])
        labels = torch.cat([torch.ones(B), torch.zeros(B)])
        g_in, d_loss = self._through(t, x, "d", input_grad=self.prev is not None, labels=labels)
        if self.prev is not None:
            t.send(self.name, self.prev, g_in, tag=GRAD["d"])
        x = fake if self.prev is None else self._recv(t, self.prev, ACT["g"])  # generator phase
        g_in, g_loss = self._through(t, x, "g", input_grad=True, labels=torch.ones(B))
        t.send(self.name, self.prev or SERVER, g_in, tag=GRAD["g"] if self.prev else FAKE_GRAD.tag)
        if self.prev is None:
            self.chain_s += time.perf_counter() - t_chain
        self.steps_done += 1
        if self.next is None:
            t.send(self.name, SERVER, torch.stack([d_loss.detach(), g_loss.detach()]), tag=LOSSES)

    def run(self, t: Transport, steps: int) -> int:
        """Run ``steps`` steps or until the server stops this client; returns the steps done."""
        self.clock.reset()
        self.chain_s, self.steps_done = 0.0, 0
        for i in range(steps):
            try:
                self.step(t)
            except StopRound:
                return i
        return steps

    def report(self, t: Transport) -> DeviceReport:
        log, me, c = t.log, self.name, self.clock
        return DeviceReport(
            compute_s=c.compute_s, work_s=c.work_s, host_wait_s=c.host_wait_s, wait_s=log.recv_wait_s.get(me, 0.0),
            bytes_sent=log.bytes_sent.get(me, 0), bytes_received=log.bytes_received.get(me, 0),
            control_bytes_sent=log.control_bytes_sent.get(me, 0),
            control_bytes_received=log.control_bytes_received.get(me, 0),
            steps_done=self.steps_done, chain_s=self.chain_s)


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
    losses: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)  # client -> step it was dropped at
    clock: Clock = field(default_factory=Clock)

    def _drop(self, t: Transport, c: ClientView, step: int) -> None:
        """Stop ``c``'s devices now: they end the round and wait for the next one."""
        self.dropped[c.name] = step
        for d in c.devices:
            t.send(SERVER, d, torch.zeros(0), tag="stop")

    def step(self, t: Transport, step: int, round_start: float, steps: int) -> None:
        active = [c for c in self.clients if c.name not in self.dropped]
        with self.clock.compute():
            z = torch.randn(self.batch_size, self.generator.z_dim, generator=self.z_generator)
            fake = self.generator(z)
        for c in active:
            t.send(SERVER, c.data_device, fake, tag=FAKE.tag)
        grads = {}
        for c in active:
            timeout = self.timeout_s
            if self.deadline_s is not None:
                left = max(round_start + self.deadline_s * (step + 1) / steps - time.perf_counter(), 1e-3)
                timeout = left if timeout is None else min(left, timeout)
            try:
                grads[c.name] = t.recv(SERVER, c.data_device, tag=FAKE_GRAD.tag, timeout_s=timeout)
            except PeerTimeout:
                if self.deadline_s is None:
                    raise
                self._drop(t, c, step)
                continue
            d_loss, g_loss = t.recv(SERVER, c.last_device, tag=LOSSES, timeout_s=self.timeout_s).tolist()
            self.losses.setdefault(c.name, []).append((d_loss, g_loss))
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
        """One round of ``steps`` steps."""
        self.dropped, self.losses = {}, {}
        self.clock.reset()
        start = time.perf_counter()
        for i in range(steps):
            self.step(t, i, start, steps)

    def late_devices(self) -> set[str]:
        """Devices of the clients dropped this round: their late step messages are expected."""
        return {d for c in self.clients if c.name in self.dropped for d in c.devices}
