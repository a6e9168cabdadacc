"""A device's training step, written once; the transport decides where the device runs.

The messages of a step are ``planner.schedule``'s (drawn there). A step has two phases,
each a fill-drain over ``M`` micro-batches (``M = 1``: plain sequential split learning;
the update is GPipe's, Huang et al. 2019) as SPEC §2.1 predicts it: the data device and
the last device run their M forwards, then their M backwards, so a cut never carries
gradients while it still carries activations (a cut is one unit of SPEC's line, its two
directions never overlapping), and a device in between takes whichever its neighbours
hand it first, a gradient first where both wait. With 3 stages and ``M = 4``::

    phase d (discriminator, real and fake; micro-batch i = [real_i ; fake_i], 2B/M samples)
      d0:  F0 F1 F2 F3 B0 B1 B2 B3   Adam step
      d1:  F0 F1 F2 F3 B0 B1 B2 B3   Adam step
      d2:  F0 F1 F2 F3 B0 B1 B2 B3   Adam step      (F includes the loss)
    phase g (generator feedback, fake only, B/M samples): the same, without Adam; d0
      sends the gradient w.r.t. the fake images (all micro-batches) to the server.

The devices of a client work concurrently (``--emulate virtual``: d1 too runs F0..F3,
then B0..B3, a fixed order, so virtual times are deterministic). Gradients
accumulate over the micro-batches (each micro-batch's loss carries ``1/M``) and each
device takes one Adam step per step, so the update is the ``M = 1`` update up to the
order of floating-point sums; dropout masks are drawn per sample from the whole batch's
seed (``SeededDropout.window``), so they agree too. A stage with ``recompute`` runs under
``torch.utils.checkpoint``: it keeps only its inputs between a micro-batch's forward and
backward and runs the forward again in the backward pass.

Real images never leave ``d0``: only the activation of its first segment does (with
``--cut-noise``, noised: ``trainer.privacy.options``), and the gradient w.r.t. the fake images.
Under DP-SGD (``trainer.privacy.dpsgd``) the real batch is a Poisson sample of varying size, phase
d ends with the client's private gradient, and the loss device reports only the fake
half of the discriminator loss. The generator phase uses the discriminator as updated in
the same step, like DCGAN. Losses: discriminator ``BCE(D(real), 1) + BCE(D(fake), 0)``;
generator the non-saturating ``BCE(D(G(z)), 1)``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from planner.models import SeededDropout
from planner.schedule import CUT_MESSAGES, FAKE, FAKE_GRAD, LOSSES
from trainer.roles.clock import Clock
from trainer.comm.codecs import decode, encode
from trainer.privacy.dpsgd import DeviceDP
from trainer.errors import StopRound
from trainer.privacy.options import Privacy
from trainer.roles.report import DeviceReport
from trainer.comm.transport import SERVER, Transport

ACT = {m.phase: m.tag for m in CUT_MESSAGES if m.direction == "forward"}  # phase -> activation tag
GRAD = {m.phase: m.tag for m in CUT_MESSAGES if m.direction == "backward"}  # phase -> gradient tag
SHARE = {m.phase: m.samples for m in CUT_MESSAGES if m.direction == "forward"}  # phase -> samples x batch


FAKE_ROWS_DP = 1 << 40  # under DP, where the fake rows' dropout streams start (real batches vary)


def micro_rows(phase: str, fake: int, i: int, *, real_start: int = 0, real: int = 0, fake_start: int = 0) -> torch.Tensor:
    """The rows of the whole phase batch that micro-batch ``i`` holds (dropout draws sample
    ``r``'s mask from row ``r``): ``[real_i ; fake_i]`` in phase d, ``real`` rows from
    ``real_start`` and ``fake`` rows from ``fake_start + i x fake``; ``fake_i`` in phase g."""
    part = torch.arange(i * fake, (i + 1) * fake)
    return part if phase == "g" else torch.cat([torch.arange(real_start, real_start + real), part + fake_start])


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
    privacy: Privacy = field(default_factory=Privacy)  # data device: noise on its cut
    dp: DeviceDP | None = None  # DP-SGD of the client's discriminator (trainer.privacy.dpsgd)
    charge: Callable[[], None] | None = None  # data device under DP: the ledger, charged before each batch
    batch_sizes: list[int] = field(default_factory=list)  # data device: the real batch of each step (DP: Poisson)
    chain_s: float = 0.0
    steps_done: int = 0
    trace: list | None = None  # the last step's (row, label, start, end), when traced

    def __post_init__(self) -> None:
        if self.batch_size % self.micro_batches:
            raise ValueError(f"{self.micro_batches} micro-batches do not divide the batch of {self.batch_size}")
        self._dropout = [m for m in self.stage.modules() if isinstance(m, SeededDropout)]
        self._rows: list[torch.Tensor] = []  # this phase's micro-batches' rows (dropout windows)
        self._counts: list[int] = []  # phase d: the real rows of each micro-batch

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
    def _window(self, phase: str, i: int, *, fresh: bool, capture: bool = False):
        """Micro-batch ``i``'s dropout rows and, with ``capture``, DP's per-sample capture."""
        rows = self._rows[i]
        for m in self._dropout:
            m.window = (rows, SHARE[phase] * self.batch_size, fresh)
        if capture:
            self.dp.per_sample.capture = (i, self._counts[i])
        try:
            yield
        finally:
            for m in self._dropout:
                m.window = None
            if capture:
                self.dp.per_sample.capture = None

    def _enter(self, phase: str, i: int, rows: int) -> None:
        """Note micro-batch ``i``'s rows as its forward starts (``rows``: what it holds)."""
        fake = self.batch_size // self.micro_batches
        if i == 0:
            self._rows, self._counts = [], []
            if self.dp is not None:  # a step the server stopped may have left captures behind
                self.dp.per_sample.clear()
        if phase == "g":
            self._rows.append(micro_rows("g", fake, i))
            return
        real = rows - fake
        self._rows.append(micro_rows("d", fake, i, real_start=sum(self._counts), real=real,
                                     fake_start=FAKE_ROWS_DP if self.dp else self.batch_size))
        self._counts.append(real)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.recompute:
            return checkpoint(self.stage, x, use_reentrant=False, preserve_rng_state=False)
        return self.stage(x)

    def _loss(self, out: torch.Tensor, phase: str) -> tuple[torch.Tensor, torch.Tensor]:
        """This micro-batch's share of the phase's loss, and of its fake half: each sample's
        loss over ``B`` (the batch, or DP's expected batch), so the phase's loss is the mean
        over each half of the batch, summed. ``[real ; fake]`` in phase d, fake in phase g."""
        fake = self.batch_size // self.micro_batches
        real = out.shape[0] - fake if phase == "d" else 0
        labels = torch.cat([torch.ones(real), torch.zeros(fake)]) if phase == "d" else torch.ones(fake)
        loss = F.binary_cross_entropy_with_logits(out.squeeze(1), labels, reduction="none") / self.batch_size
        return loss.sum(), loss[real:].detach().sum()

    def _next_work(self, t: Transport, phase: str, f: int, b: int, outs: list) -> tuple[str, torch.Tensor | None]:
        """What this device does next in a phase, after ``f`` forwards and ``b`` backwards:
        ``("F", input)`` or ``("B", gradient)``. GPipe's fill-drain, as SPEC §2.1 predicts it:
        the data device and the last device run their M forwards, then their M backwards (so
        no cut carries gradients while it still carries activations: a cut is one unit of
        SPEC's line, not two directions overlapping), and a device in between whichever its
        neighbours hand it first, a gradient first where both wait. ``--emulate virtual``:
        one in between runs its M forwards, then its M backwards (real-time order is noise)."""
        M, n = self.micro_batches, -1  # rows: DP's Poisson batches vary
        act = (self.prev, ACT[phase])
        if self.prev is None and f < M:
            return "F", None
        if self.next is None:
            return ("F", self._recv(t, *act, self.codec_in, (n, *self.input_shape))) if f < M else ("B", None)
        grad = ((self.next, GRAD[phase]),) if b < f else ()
        wanted = ((act,) if f < M else grad) if self.clock.virtual else grad + ((act,) if f < M else ())
        payload, src = t.recv_any(self.name, wanted, timeout_s=self.timeout_s, stoppable=True)
        if src == self.next:
            return "B", self._decode(payload, self.codec_out, outs[b].shape)
        return "F", self._decode(payload, self.codec_in, (n, *self.input_shape))

    def _phase(self, t: Transport, phase: str, inputs: list[torch.Tensor] | None) -> tuple[list, list]:
        """One fill-drain over the micro-batches, each device taking its work as it comes
        (:meth:`_next_work`); returns (input gradients where this device needs them, the
        phase's loss and its fake half on the last device). Forwards and backwards each run
        in micro-batch order, so gradients accumulate in the same order whatever the timing.
        Under DP, phase d ends with the client's private gradient (:meth:`_private`)."""
        M, first, last = self.micro_batches, self.prev is None, self.next is None
        input_grad = not first or phase == "g"
        params = list(self.stage.parameters()) if phase == "d" else []
        private = self.dp is not None and phase == "d"
        xs, outs, grads, total = [None] * M, [None] * M, [], [torch.zeros(()), torch.zeros(())]
        f = b = 0
        while b < M:
            kind, payload = self._next_work(t, phase, f, b, outs)
            if kind == "F":
                i, f = f, f + 1
                x = inputs[i] if first else payload
                self._enter(phase, i, len(x))
                with self.clock.compute(f"F{phase}{i}"):
                    x = x.detach().requires_grad_(input_grad)
                    with self._window(phase, i, fresh=i == 0, capture=private), torch.enable_grad():
                        out = self._forward(x)
                    if last:
                        out, fake_part = self._loss(out, phase)
                        total = [total[0] + out.detach(), total[1] + fake_part]
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
                if phase == "d" and i == M - 1 and self.optimizer is not None and not private:
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
            outs[i] = None  # free the micro-batch's graph
            if input_grad and not first:
                self._send(t, self.prev, xs[i].grad, GRAD[phase], self.codec_in, f"{GRAD[phase]} {i}")
            elif input_grad:
                grads.append(xs[i].grad)
            xs[i] = None
        if private:
            self._private(t)
        return grads, total

    def _private(self, t: Transport) -> None:
        """DP-SGD's end of phase d: clip factors agreed with the data device, clipped sum
        plus noise in ``.grad`` (``trainer.privacy.dpsgd``), then the Adam step."""
        with self.clock.compute("dp norms"):
            norms = self.dp.per_sample.squared_norms(self._counts)
        factors = self.dp.exchange(self.name, t, norms, timeout_s=self.timeout_s)
        with self.clock.compute("dp step"):
            self.dp.apply(self._counts, factors)
            if self.optimizer is not None:
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)

    def step(self, t: Transport) -> None:
        B, M = self.batch_size, self.micro_batches
        b = B // M
        real_fake = fakes = None
        if self.prev is None:
            if self.charge is not None:
                self.charge()  # on disk before the batch is drawn: a step begun is a step charged
            real = self.sampler.next_batch()
            self.batch_sizes.append(len(real))
            fake = self._recv(t, SERVER, FAKE.tag)
            t_chain = self.clock.time_s()
            reals = torch.tensor_split(real, M)  # M nearly equal parts; a Poisson batch may leave some empty
            real_fake = [torch.cat([reals[i], fake[i * b:(i + 1) * b]]) for i in range(M)]
            fakes = [fake[i * b:(i + 1) * b] for i in range(M)]
        _, (d_loss, d_fake) = self._phase(t, "d", real_fake)
        fake_grads, (g_loss, _) = self._phase(t, "g", fakes)
        if self.prev is None:
            t.send(self.name, SERVER, torch.cat(fake_grads), tag=FAKE_GRAD.tag)
            self.chain_s += self.clock.time_s() - t_chain
        self.steps_done += 1
        if self.next is None:  # under DP only the fake half: the real half is a fresh query on the records
            t.send(self.name, SERVER, torch.stack([d_fake if self.dp else d_loss, g_loss]), tag=LOSSES)

    def run(self, t: Transport, steps: int, *, trace_last: bool = False) -> int:
        """Run ``steps`` steps or until the server stops this client; returns the steps done.
        ``trace_last``: keep the timestamps of the last step's work and transfers in ``trace``."""
        self.clock.reset()
        self.chain_s, self.steps_done, self.trace, self.batch_sizes = 0.0, 0, None, []
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
            compute_s=c.compute_s, codec_s=c.codec_s, work_s=c.work_s, host_wait_s=c.host_wait_s,
            wait_s=log.recv_wait_s.get(me, 0.0), bytes_sent=log.bytes_sent.get(me, 0),
            bytes_received=log.bytes_received.get(me, 0), control_bytes_sent=log.control_bytes_sent.get(me, 0),
            control_bytes_received=log.control_bytes_received.get(me, 0), steps_done=self.steps_done, chain_s=self.chain_s)
