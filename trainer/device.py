"""A device's training step, written once; the transport decides where the device runs.

The messages of a step are ``planner.schedule``'s (drawn there). A step has two phases,
each a fill-drain over ``M`` micro-batches (``M = 1``: plain sequential split learning;
the update is GPipe's, Huang et al. 2019) in which every device takes its work as it
comes: the data device runs its forwards first, the last device a backward right after
each forward, and a device in between whichever its neighbours hand it first, a gradient
first where both wait. With 3 stages and ``M = 4`` one run may go::

    phase d (discriminator, real and fake; micro-batch i = [real_i ; fake_i], 2B/M samples)
      d0:  F0 F1 F2 F3 B0 B1 B2 B3   Adam step
      d1:  F0 F1 B0 F2 F3 B1 B2 B3   Adam step      (as activations and gradients arrive)
      d2:  F0 B0 F1 B1 F2 B2 F3 B3   Adam step      (F includes the loss)
    phase g (generator feedback, fake only, B/M samples): the same, without Adam; d0
      sends the gradient w.r.t. the fake images (all micro-batches) to the server.

No device idles while it has work, so the devices of a client work concurrently and the
bottleneck stage stays busy, as SPEC §2.1's line of units assumes. Gradients accumulate over the micro-batches (each micro-batch's loss
carries ``1/M``) and each device takes one Adam step per step, so the update is the
``M = 1`` update up to the order of floating-point sums; dropout masks are drawn per
sample from the whole batch's seed (``SeededDropout.window``), so they agree too. A stage with
``recompute`` runs under ``torch.utils.checkpoint``: it keeps only its inputs between a
micro-batch's forward and backward and runs the forward again in the backward pass.

Real images never leave ``d0``: only the activation of its first segment does (with
``--cut-noise``, noised), and the gradient w.r.t. the fake images (with ``--dp-noise``,
clipped and noised per sample): ``trainer.privacy``. The
generator phase uses the discriminator as updated in the same step, like DCGAN. Losses:
discriminator ``BCE(D(real), 1) + BCE(D(fake), 0)``; generator the non-saturating
``BCE(D(G(z)), 1)``.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import astuple, dataclass, field, fields

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from planner.models import SeededDropout
from planner.schedule import CUT_MESSAGES, FAKE, FAKE_GRAD, LOSSES
from trainer.clock import Clock
from trainer.codecs import decode, encode
from trainer.errors import StopRound
from trainer.privacy import Privacy
from trainer.transport import SERVER, Transport

ACT = {m.phase: m.tag for m in CUT_MESSAGES if m.direction == "forward"}  # phase -> activation tag
GRAD = {m.phase: m.tag for m in CUT_MESSAGES if m.direction == "backward"}  # phase -> gradient tag
SHARE = {m.phase: m.samples for m in CUT_MESSAGES if m.direction == "forward"}  # phase -> samples x batch


@dataclass
class DeviceReport:
    """What a device tells the server after each round (sums over the round's steps)."""

    compute_s: float  # the device's compute time (emulated under --emulate sleep)
    codec_s: float  # encoding and decoding what crosses its cuts (emulated alike)
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


def micro_rows(phase: str, batch: int, micro_batches: int, i: int) -> torch.Tensor:
    """The rows of the whole phase batch that micro-batch ``i`` holds: ``[real_i ; fake_i]``
    in phase d (whose batch is ``[real ; fake]``), ``fake_i`` in phase g."""
    b = batch // micro_batches
    part = torch.arange(i * b, (i + 1) * b)
    return torch.cat([part, part + batch]) if phase == "d" else part


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
    micro_batches: int = 1  # M: the step runs as M micro-batches, pipelined
    recompute: bool = False  # keep only inputs; run the forward again in the backward pass
    codec_in: str = "none"  # the codec of the cut before this stage
    codec_out: str = "none"  # the codec of the cut after this stage
    input_shape: tuple[int, ...] = ()  # per sample, what the cut before this stage carries
    privacy: Privacy = field(default_factory=Privacy)  # data device: DP feedback, noise on its cut
    chain_s: float = 0.0
    steps_done: int = 0
    trace: list | None = None  # the last step's (row, label, start, end), when traced

    def __post_init__(self) -> None:
        if self.batch_size % self.micro_batches:
            raise ValueError(f"{self.micro_batches} micro-batches do not divide the batch of {self.batch_size}")
        self._dropout = [m for m in self.stage.modules() if isinstance(m, SeededDropout)]

    def _recv(self, t: Transport, src: str, tag: str, codec: str = "none", shape=None) -> torch.Tensor:
        return self._decode(t.recv(self.name, src, tag=tag, timeout_s=self.timeout_s, stoppable=True), codec, shape)

    def _decode(self, payload: torch.Tensor, codec: str, shape) -> torch.Tensor:
        if codec == "none":
            return payload
        with self.clock.compute(codec=True):
            return decode(payload, codec, shape)

    def _send(self, t: Transport, dst: str, x: torch.Tensor, tag: str, codec: str, label: str) -> None:
        if codec != "none":
            with self.clock.compute(codec=True):
                x = encode(x, codec)
        start, end = t.send(self.name, dst, x, tag=tag)
        if self.trace is not None:
            link = f"{self.name}→{dst}" if dst == self.next else f"{dst}→{self.name}"
            self.trace.append((link, label, start, end))

    @contextmanager
    def _window(self, phase: str, i: int, *, fresh: bool):
        rows = micro_rows(phase, self.batch_size, self.micro_batches, i)
        for m in self._dropout:
            m.window = (rows, SHARE[phase] * self.batch_size, fresh)
        try:
            yield
        finally:
            for m in self._dropout:
                m.window = None

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.recompute:
            return checkpoint(self.stage, x, use_reentrant=False, preserve_rng_state=False)
        return self.stage(x)

    def _loss(self, out: torch.Tensor, phase: str) -> torch.Tensor:
        """This micro-batch's share of the phase's loss: the mean over each half ([real ;
        fake] in phase d) of the micro-batch, summed, over ``M``."""
        b = self.batch_size // self.micro_batches
        if phase == "d":
            labels = torch.cat([torch.ones(b), torch.zeros(b)])
        else:
            labels = torch.ones(b)
        loss = F.binary_cross_entropy_with_logits(out.squeeze(1), labels, reduction="none")
        return loss.view(-1, b).mean(1).sum() / self.micro_batches

    def _next_work(self, t: Transport, phase: str, f: int, b: int, outs: list) -> tuple[str, torch.Tensor | None]:
        """What this device does next in a phase, after ``f`` forwards and ``b`` backwards:
        ``("F", input)`` or ``("B", gradient)``. The data device runs its forwards first (its
        inputs are here), the last device a backward right after each forward (it computes
        the loss itself), and a device in between whichever its neighbours hand it first,
        a gradient first where both wait. So no device idles while it has work, and the
        bottleneck stage keeps busy as SPEC §2.1's line of units has it."""
        M, n = self.micro_batches, SHARE[phase] * self.batch_size // self.micro_batches
        act = (self.prev, ACT[phase])
        if self.prev is None and f < M:
            return "F", None
        if self.next is None:
            return ("B", None) if b < f else ("F", self._recv(t, *act, self.codec_in, (n, *self.input_shape)))
        wanted = (((self.next, GRAD[phase]),) if b < f else ()) + ((act,) if f < M else ())
        payload, src = t.recv_any(self.name, wanted, timeout_s=self.timeout_s, stoppable=True)
        if src == self.next:
            return "B", self._decode(payload, self.codec_out, outs[b].shape)
        return "F", self._decode(payload, self.codec_in, (n, *self.input_shape))

    def _phase(self, t: Transport, phase: str, inputs: list[torch.Tensor] | None) -> tuple[list, torch.Tensor | None]:
        """One fill-drain over the micro-batches, each device taking its work as it comes
        (:meth:`_next_work`); returns (input gradients where this device needs them, the
        phase's loss on the last device). Forwards and backwards each run in micro-batch
        order, so gradients accumulate in the same order whatever the timing."""
        M, first, last = self.micro_batches, self.prev is None, self.next is None
        input_grad = not first or phase == "g"
        params = list(self.stage.parameters()) if phase == "d" else []
        xs, outs, grads, total = [None] * M, [None] * M, [], None
        f = b = 0
        while b < M:
            kind, payload = self._next_work(t, phase, f, b, outs)
            if kind == "F":
                i, f = f, f + 1
                x = inputs[i] if first else payload
                with self.clock.compute(f"F{phase}{i}"):
                    x = x.detach().requires_grad_(input_grad)
                    with self._window(phase, i, fresh=i == 0), torch.enable_grad():
                        out = self._forward(x)
                    if last:
                        out = self._loss(out, phase)
                        total = out.detach() if total is None else total + out.detach()
                if not last:
                    sent = self.privacy.activation(out) if first else out
                    self._send(t, self.next, sent, ACT[phase], self.codec_out, f"{ACT[phase]} {i}")
                xs[i], outs[i] = x, out
                continue
            i, b = b, b + 1
            with self.clock.compute(f"B{phase}{i}"):
                wrt = params + ([xs[i]] if input_grad else [])
                if wrt:
                    with self._window(phase, i, fresh=False):
                        torch.autograd.backward(outs[i], payload, inputs=wrt)
                if phase == "d" and i == M - 1 and self.optimizer is not None:
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
            outs[i] = None  # free the micro-batch's graph
            if input_grad and not first:
                self._send(t, self.prev, xs[i].grad, GRAD[phase], self.codec_in, f"{GRAD[phase]} {i}")
            elif input_grad:
                grads.append(xs[i].grad)
            xs[i] = None
        return grads, total

    def step(self, t: Transport) -> None:
        B, M = self.batch_size, self.micro_batches
        b = B // M
        real_fake = fakes = None
        if self.prev is None:
            real = self.sampler.next_batch()
            fake = self._recv(t, SERVER, FAKE.tag)
            t_chain = time.perf_counter()
            real_fake = [torch.cat([real[i * b:(i + 1) * b], fake[i * b:(i + 1) * b]]) for i in range(M)]
            fakes = [fake[i * b:(i + 1) * b] for i in range(M)]
        _, d_loss = self._phase(t, "d", real_fake)
        fake_grads, g_loss = self._phase(t, "g", fakes)
        if self.prev is None:
            t.send(self.name, SERVER, self.privacy.feedback(torch.cat(fake_grads)), tag=FAKE_GRAD.tag)
            self.chain_s += time.perf_counter() - t_chain
        self.steps_done += 1
        if self.next is None:
            t.send(self.name, SERVER, torch.stack([d_loss, g_loss]), tag=LOSSES)

    def run(self, t: Transport, steps: int, *, trace_last: bool = False) -> int:
        """Run ``steps`` steps or until the server stops this client; returns the steps done.
        ``trace_last``: keep the timestamps of the last step's work and transfers in ``trace``."""
        self.clock.reset()
        self.chain_s, self.steps_done, self.trace = 0.0, 0, None
        for i in range(steps):
            if trace_last and i == steps - 1:
                self.trace, self.clock.trace = [], []
            try:
                self.step(t)
            except StopRound:
                return i
            finally:
                if self.clock.trace is not None:
                    self.trace += [(self.name, *x) for x in self.clock.trace]
                    self.clock.trace = None
        return steps

    def report(self, t: Transport) -> DeviceReport:
        log, me, c = t.log, self.name, self.clock
        return DeviceReport(
            compute_s=c.compute_s, codec_s=c.codec_s, work_s=c.work_s, host_wait_s=c.host_wait_s, wait_s=log.recv_wait_s.get(me, 0.0),
            bytes_sent=log.bytes_sent.get(me, 0), bytes_received=log.bytes_received.get(me, 0),
            control_bytes_sent=log.control_bytes_sent.get(me, 0),
            control_bytes_received=log.control_bytes_received.get(me, 0),
            steps_done=self.steps_done, chain_s=self.chain_s)
