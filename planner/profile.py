"""Per-layer profile of a discriminator: FLOPs, parameters, memory and measured time.

One *GAN training step* on a discriminator, with batch size ``B`` (see
``trainer.step`` for the message schedule), passes through every layer:

1. the discriminator phase: forward on ``2B`` samples (real and fake), backward with
   gradients for the weights (and for the layer's input, except layer 0), then the
   layer's Adam update;
2. the generator phase: forward on ``B`` fake samples, backward for the input only.

``time_s`` is that work's CPU time (``time.thread_time`` of the one computing thread,
:data:`PROFILE_THREADS`; medians of repeats after warm-up; other threads and programs do
not count, as under ``--emulate virtual``) in the context of the whole model: layers run
in one forward and backward cost less than each timed alone (a graph, a gradient call,
an output gradient per call), so each round also times the whole model as one segment
and the layers' work is scaled to sum to it (:func:`planner.layer_context.in_context`).
The Adam update is taken once per step, a gradient accumulation per further
micro-batch, and the loss per micro-batch on the last layer
(:func:`planner.layer_context.step_s`). A device with ``processing_time_factor`` ``f``
takes ``f * time_s``. FLOPs: fvcore's count for one forward of ``B`` (a fused
multiply-add is one flop), elementwise ops counted one per output element by explicit
handles; anything still uncounted is in ``uncounted_ops``.

Memory to train a layer, bytes: weights, gradients and Adam's two moments (4 x 4 bytes
per parameter), the tensors autograd saves in the discriminator phase (measured with
``saved_tensors_hooks``), and the output's transfer buffers (activation out, gradient in).

For recomputation (SPEC §2.1; memory model: :mod:`planner.costs`), each layer also records
``forward_s``, the part of ``time_s`` in forward passes (what a recomputing stage runs
twice), and ``input_bytes``, what it reads for one batch. Stage overhead, codecs and the
generator's step: :mod:`planner.profile_options`.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import elementwise_flop_counter

from planner.layer_context import in_context, step_s
from planner.models import LayeredModel
from planner.profile_options import (Timed, cpu_s, measure_accumulate_s, measure_codec_s, measure_generator_step,
                                     measure_loss_s, measure_overhead_s)
from planner.usermodel import generator_for

PROFILE_VERSION = 8  # 6: CPU time, layers in context, update_s; 7: overhead_s cold; 8: each M's tables on the base clock
# The torch threads a profile times each layer on: one (a pool wakes cold after each emulated
# sleep: 1.04-1.09x slower at 2 threads, 1.00x at 1, ``benchmarks/emulation.py``; thread CPU time
# sees only one thread). A plan's times hold for a device that computes so: the trainer's
# devices do (``trainer.roles.clock.PROFILE_THREADS``).
PROFILE_THREADS = 1
BYTES_PER_PARAM_TRAINING = 16  # fp32 weight + gradient + Adam exp_avg + exp_avg_sq
_ELEMENTWISE_OPS = ("aten::leaky_relu", "aten::add", "aten::mul", "aten::div", "aten::rand",
                    "aten::ge", "aten::tanh", "aten::sigmoid", "aten::relu")


@dataclass(frozen=True)
class LayerProfile:
    name: str  # layer name in the model
    kind: str  # module class, e.g. Conv2d
    params: int  # trainable parameters
    param_bytes: int  # bytes of the parameters (fp32)
    flops: int  # forward flops for one batch of batch_size (fvcore: FMA = 1 flop)
    output_shape: tuple[int, ...]  # per sample
    output_bytes: int  # bytes of the output for one batch of batch_size
    saved_bytes: int  # bytes autograd saves in the discriminator phase (2 x batch)
    memory_bytes: int  # bytes to train the layer (see module docstring)
    time_s: float  # measured seconds of one GAN training step through this layer
    uncounted_ops: tuple[str, ...] = ()  # ops neither fvcore nor our handles count
    forward_s: float = 0.0  # the part of time_s spent in forward passes (2 x batch, then batch)
    input_bytes: int = 0  # bytes of the layer's inputs for one batch of batch_size
    codec_s: dict[str, float] = field(default_factory=dict)  # codec -> seconds per step at a cut after it
    update_s: float = 0.0  # the part of time_s spent in the layer's Adam step
    accumulate_s: float = 0.0  # adding its gradients to a step's earlier micro-batches', once


@dataclass(frozen=True)
class ModelProfile:
    model: str
    fingerprint: str
    input_shape: tuple[int, ...]
    batch_size: int
    layers: tuple[LayerProfile, ...]
    host: str
    torch_version: str
    threads: int
    seconds: float  # how long profiling took (0 when read from the cache)
    overhead_s: float = 0.0  # fixed seconds per micro-batch of holding a stage (profile_options)
    generator_step_s: float = 0.0  # the server's generator step at batch_size
    fake_bytes: int = 0  # one batch of generated images
    context_ratio: float = 1.0  # the whole model's work over the sum of its layers' timed alone (in_context)
    loss_s: float = 0.0  # the last device's loss per micro-batch, in the last layer's time_s

    @property
    def step_time_s(self) -> float:
        return sum(layer.time_s for layer in self.layers)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "ModelProfile":
        layers = tuple(LayerProfile(**{**x, "output_shape": tuple(x["output_shape"]),
                                       "uncounted_ops": tuple(x["uncounted_ops"])}) for x in d["layers"])
        return cls(**{**d, "layers": layers, "input_shape": tuple(d["input_shape"])})


def count_flops(module: torch.nn.Module, inputs: tuple) -> tuple[int, tuple[str, ...]]:
    """fvcore's forward flops with handles for elementwise ops; returns (flops, uncounted)."""
    analysis = FlopCountAnalysis(module, inputs)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    for op in _ELEMENTWISE_OPS:
        analysis.set_op_handle(op, elementwise_flop_counter(0, 1))
    return int(analysis.total()), tuple(sorted(analysis.unsupported_ops()))


def saved_bytes(fn: Callable[[], torch.Tensor]) -> int:
    """Bytes of the distinct tensors autograd saves while ``fn`` runs."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def _layer_inputs(model: LayeredModel, x: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """The inputs every layer sees for model input ``x`` (no grad)."""
    values = {-1: x}
    out = []
    with torch.no_grad():
        for i, (node, layer) in enumerate(zip(model.nodes, model.layers)):
            args = tuple(values[j] for j in node.inputs)
            out.append(args)
            values[i] = layer(*args)
    return out


def time_layer_step(layer: torch.nn.Module, args_2b: tuple, args_1b: tuple, *, first: bool,
                    optimizer: torch.optim.Optimizer | None = None) -> tuple[float, float, float]:
    """``(seconds, forward seconds, update seconds)`` of one GAN step's work through
    ``layer`` (module docstring) in this thread's CPU time."""
    params = [p for p in layer.parameters() if p.requires_grad]
    t0, forward, update = time.thread_time(), 0.0, 0.0
    for args, wrt_params, need_input in ((args_2b, params, not first), (args_1b, [], True)):
        t_forward = time.thread_time()
        xs = tuple(a.detach().requires_grad_(need_input) for a in args)
        out = layer(*xs)
        forward += time.thread_time() - t_forward
        wrt = wrt_params + (list(xs) if need_input else [])
        grads = torch.autograd.grad(out, wrt, torch.ones_like(out), allow_unused=True) if wrt else ()
        if wrt_params and optimizer is not None:  # the discriminator phase ends with the Adam update
            for p, g in zip(params, grads):
                p.grad = g
            t_update = time.thread_time()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            update = time.thread_time() - t_update
    return time.thread_time() - t0, forward, update


def layer_args(model: LayeredModel, batch_size: int) -> list[tuple[tuple, tuple]]:
    """Per layer, its inputs for one GAN step: (real and fake, 2 x batch; fake, batch)."""
    model.train()
    gen = torch.Generator().manual_seed(0)
    x2 = torch.rand((2 * batch_size, *model.input_shape), generator=gen) * 2 - 1
    inputs_2b = _layer_inputs(model, x2)
    return [(inputs_2b[i], tuple(a[:batch_size] for a in inputs_2b[i])) for i in range(len(model))]


def layer_outputs(model: LayeredModel, args: list[tuple[tuple, tuple]]) -> list[torch.Tensor]:
    """Each layer's output for its batch-sized input (:func:`layer_args`), without grad."""
    with torch.no_grad():
        return [layer(*args1) for layer, (_, args1) in zip(model.layers, args)]


def layer_codecs(shapes: list[tuple[int, ...]], batch_size: int, *, timed: Timed = cpu_s) -> list[dict[str, float]]:
    """Per layer output shape, its codecs' seconds (measured once per distinct shape;
    ``timed`` as :func:`planner.profile_options.measure_codec_s`)."""
    by_shape = {shape: measure_codec_s(shape, batch_size, timed=timed) for shape in dict.fromkeys(shapes)}
    return [by_shape[shape] for shape in shapes]


def time_layers(model: LayeredModel, args: list[tuple[tuple, tuple]], *, repeats: int, warmup: int,
                timed: Callable[[Callable[[], tuple[float, ...]]], tuple[float, ...]] | None = None,
                progress: Callable[[int, int], None] | None = None, whole: bool = False) -> list[tuple[float, float, float]]:
    """Per layer, the medians of :func:`time_layer_step`'s ``(seconds, forward, update)``
    over ``repeats`` after ``warmup``; ``timed(run)`` may time ``run`` itself (a device's
    emulated clock does). By default ``run``'s own timing.

    Timed round-robin over the layers, so a burst of load elsewhere on the machine
    spreads over every layer's repeats instead of inflating one layer. ``whole``: one
    more entry, the whole model as one segment, timed in the same rounds."""
    model.train()
    layers = [*model.layers, *([model.segment(0, len(model))] if whole else [])]
    inputs = [*args, *([args[0]] if whole else [])]
    samples: list[list[tuple[float, float, float]]] = [[] for _ in layers]  # (step, forward, update) per round
    state = {k: v.clone() for k, v in model.state_dict().items()}
    optimizers = [torch.optim.Adam(list(layer.parameters()), lr=1e-12) if list(layer.parameters()) else None
                  for layer in layers]
    for r in range(warmup + repeats):
        for i, layer in enumerate(layers):
            def run(i=i, layer=layer) -> tuple[float, float, float]:
                return time_layer_step(layer, inputs[i][0], inputs[i][1], first=(i in (0, len(model))),
                                       optimizer=optimizers[i])

            timing = timed(run) if timed is not None else run()
            if r >= warmup:
                samples[i].append(timing)
        if progress:
            progress(r + 1, warmup + repeats)
    model.load_state_dict(state)  # the timing's optimizer steps leave no trace
    return [tuple(statistics.median(x) for x in zip(*rounds)) for rounds in samples]


def measure(model: LayeredModel, *, batch_size: int = 64, repeats: int = 11, warmup: int = 2,
            progress: Callable[[int, int], None] | None = None) -> ModelProfile:
    """Profile every layer of ``model`` at ``batch_size`` on one core of this machine
    (:data:`PROFILE_THREADS`)."""
    with profile_threads():
        return _measure(model, batch_size=batch_size, repeats=repeats, warmup=warmup, progress=progress)


def _measure(model: LayeredModel, *, batch_size: int, repeats: int, warmup: int,
             progress: Callable[[int, int], None] | None) -> ModelProfile:
    t_start = time.perf_counter()
    args = layer_args(model, batch_size)
    timings, ratio = in_context(time_layers(model, args, repeats=repeats, warmup=warmup, progress=progress, whole=True))
    outputs = layer_outputs(model, args)
    codecs = layer_codecs([tuple(o.shape[1:]) for o in outputs], batch_size)
    layers, loss, last = [], measure_loss_s(batch_size), len(model) - 1
    for i, (node, layer, out1) in enumerate(zip(model.nodes, model.layers, outputs)):
        args2, args1 = args[i]
        flops, uncounted = count_flops(layer, args1)
        saved = saved_bytes(lambda: layer(*(a.detach().requires_grad_(i > 0) for a in args2)))
        params = sum(p.numel() for p in layer.parameters())
        out_bytes = out1.numel() * out1.element_size()
        shape = tuple(out1.shape[1:])
        layers.append(LayerProfile(
            name=node.name, kind=type(layer).__name__, params=params, param_bytes=params * 4,
            flops=flops, output_shape=shape, output_bytes=out_bytes,
            saved_bytes=saved,
            memory_bytes=params * BYTES_PER_PARAM_TRAINING + saved + 2 * 2 * out_bytes,
            time_s=step_s(timings[i][0], timings[i][2], loss=loss if i == last else 0.0), uncounted_ops=uncounted,
            forward_s=min(timings[i][1], timings[i][0]),
            input_bytes=sum(a.numel() * a.element_size() for a in args1), codec_s=codecs[i],
            update_s=min(timings[i][2], timings[i][0]), accumulate_s=measure_accumulate_s(layer),
        ))
    # batch norm cannot train on one sample: a batch of 1 (a micro-batch) is timed at 2, halved
    pair = max(batch_size, 2)
    generator_s, fake_bytes = measure_generator_step(pair, generator_for(model), model.input_shape)
    generator_s, fake_bytes = generator_s * batch_size / pair, fake_bytes * batch_size // pair
    return ModelProfile(
        model=model.model_name, fingerprint=model.fingerprint(), input_shape=model.input_shape,
        batch_size=batch_size, layers=tuple(layers), host=platform.node(),
        torch_version=torch.__version__, threads=torch.get_num_threads(),
        seconds=time.perf_counter() - t_start, overhead_s=measure_overhead_s(),
        generator_step_s=generator_s, fake_bytes=fake_bytes, context_ratio=ratio, loss_s=loss,
    )


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Torch computes with ``n`` threads inside (as before, after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def profile_threads():
    """Torch computes with :data:`PROFILE_THREADS` threads inside: as profiles are timed."""
    return torch_threads(PROFILE_THREADS)
