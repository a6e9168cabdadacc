"""DP-SGD for a discriminator split over a client's devices.

Differentially private SGD (Abadi et al., "Deep Learning with Differential Privacy", CCS
2016, Alg. 1) as private GANs train their discriminator (Xie et al., "Differentially
Private Generative Adversarial Network", 2018; Bie, Kamath, Zhang, "Private GANs,
Revisited", TMLR 2023), with the clipping norm taken over the WHOLE discriminator although
each device holds only its segment. One step of phase d (``trainer.roles.device``) of a client
on devices ``d0`` (data) .. ``dk``::

    d0: the real batch, Poisson-sampled (each record with probability q = B / N)
    every device: forwards and backwards of [real ; fake] as usual; each of its
        parameterised layers keeps the real rows' inputs and output gradients
    d1 .. dk --- dp_norms [n]: per real sample, its gradient's squared norm on my layers --> d0
    d0: norm_r = sqrt(sum over devices);  c_r = min(1, C / norm_r)
    d0 --- dp_scale [n]: c ----------------------------------------------------------> d1 .. dk
    every device: grad = (fake rows' gradient + sum_r c_r g_r + N(0, (SIGMA C)^2 I)) / B, Adam

``g_r`` is sample ``r``'s gradient of its own loss; ``B`` the expected batch ``q N``, as
Opacus normalises Poisson batches. A layer's per-sample gradients come from its input and
output gradient, without forming it where that is cheaper: for a Linear layer
``||a||^2 ||g||^2``, for a convolution ``sum_{t,t'} (a_t . a_t') (g_t . g_t')`` over its
unfolded positions (the "ghost norm", Goodfellow 2015; Li et al., ICLR 2022, Sec. 4), and
Opacus's grad samplers for every other layer type; the clipped sum is one vector-Jacobian product
per layer with the output gradient's rows scaled by ``c_r - 1``, added to the batch
gradient autograd already holds. The fake rows' gradient is not clipped: it depends on the
records only through the discriminator's earlier, already noised, updates and the
generator they trained (post-processing), as the accountant's adaptive composition
allows. Layers that mix samples (BatchNorm) have no per-sample gradient and are refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from opacus.grad_sample import GradSampleModule
from torch import nn

from planner.errors import InputError

NORMS, SCALE, SIGMA = "dp_norms", "dp_scale", "dp_sigma"  # the messages above; SIGMA once per run
SAMPLERS = GradSampleModule.GRAD_SAMPLERS  # layer type -> per-sample gradient from input and output gradient
MIXING = (nn.modules.batchnorm._BatchNorm, nn.SyncBatchNorm)


def own_parameters(m: nn.Module) -> list[nn.Parameter]:
    return [p for p in m.parameters(recurse=False) if p.requires_grad]


def check_layers(model: nn.Module, *, option: str = "--dp-epsilon") -> None:
    """InputError naming the first parameterised layer DP-SGD cannot train per sample."""
    for name, m in model.named_modules():
        if isinstance(m, MIXING):
            raise InputError(option, None, f"layer {name} ({type(m).__name__}) mixes the samples of a batch, so no "
                             "sample has a gradient of its own to clip; use GroupNorm/LayerNorm or no normalisation")
        if own_parameters(m) and type(m) not in SAMPLERS:
            known = ", ".join(sorted(t.__name__ for t in SAMPLERS))
            raise InputError(option, None, f"layer {name} ({type(m).__name__}) has parameters but no per-sample "
                             f"gradient rule; DP-SGD trains {known}")


def layer_sq_norms(m: nn.Module, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Per sample, the squared L2 norm of layer ``m``'s parameter gradient, from its input
    ``a`` and output gradient ``g`` (float64)."""
    whole = all(p.requires_grad for p in m.parameters(recurse=False))
    bias = getattr(m, "bias", None) is not None
    if whole and type(m) is nn.Linear and a.dim() == 2:
        s = a.pow(2).sum(1) * g.pow(2).sum(1) + (g.pow(2).sum(1) if bias else 0)
        return s.double()
    if whole and type(m) is nn.Conv2d and m.groups == 1 and not isinstance(m.padding, str) \
            and m.padding_mode == "zeros":
        A = F.unfold(a, m.kernel_size, dilation=m.dilation, padding=m.padding, stride=m.stride)  # [n, C k k, T]
        G = g.flatten(2)  # [n, C_out, T]
        T = G.shape[2]
        if T * T <= A.shape[1] * G.shape[1]:  # ghost norm: cheaper than the per-sample gradient
            s = ((A.transpose(1, 2) @ A) * (G.transpose(1, 2) @ G)).sum((1, 2))
        else:
            s = torch.bmm(G, A.transpose(1, 2)).pow(2).sum((1, 2))
        return (s + (G.sum(2).pow(2).sum(1) if bias else 0)).double()
    return sum(x.flatten(1).double().pow(2).sum(1) for x in SAMPLERS[type(m)](m, [a], g).values())


class PerSample:
    """Captures, for one segment, what its layers need to give each real sample's gradient.

    Set ``capture = (micro-batch, real rows)`` around a forward: each parameterised layer
    keeps the first ``real rows`` of its input and, when the backward reaches it, of its
    output gradient. A recomputed forward (``torch.utils.checkpoint``) runs with
    ``capture`` unset and keeps nothing twice."""

    def __init__(self, stage: nn.Module):
        check_layers(stage)
        self.layers = [m for m in stage.modules() if own_parameters(m)]
        self.capture: tuple[int, int] | None = None
        self.inputs: dict[tuple[int, int], torch.Tensor] = {}
        self.grads: dict[tuple[int, int], torch.Tensor] = {}
        for j, m in enumerate(self.layers):
            m.register_forward_hook(partial(self._forward, j))

    def _forward(self, j: int, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if self.capture is None:
            return
        i, n = self.capture
        self.inputs[i, j] = inputs[0][:n].detach()
        if output.requires_grad:
            output.register_hook(partial(self._backward, i, j, n))

    def _backward(self, i: int, j: int, n: int, grad: torch.Tensor) -> None:
        self.grads[i, j] = grad[:n].detach()

    def squared_norms(self, counts: list[int]) -> torch.Tensor:
        """Per real sample (micro-batches in order), its gradient's squared L2 norm over
        this segment's parameters, float64."""
        out = []
        for i, n in enumerate(counts):
            s = torch.zeros(n, dtype=torch.float64)
            for j, m in enumerate(self.layers):
                if n and (i, j) in self.grads:
                    s += layer_sq_norms(m, self.inputs[i, j], self.grads[i, j])
            out.append(s)
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)

    def add_scaled(self, counts: list[int], weights: torch.Tensor) -> None:
        """Add ``sum_r weights_r g_r`` to each parameter's ``.grad``: per layer and
        micro-batch, one vector-Jacobian product with the output gradient's rows scaled."""
        start = 0
        for i, n in enumerate(counts):
            w, start = weights[start:start + n], start + n
            for j, m in enumerate(self.layers):
                if not n or (i, j) not in self.grads:
                    continue
                g = self.grads[i, j]
                names = [k for k, p in m.named_parameters(recurse=False) if p.requires_grad]
                live = {k: getattr(m, k).detach().requires_grad_() for k in names}
                with torch.enable_grad():
                    out = torch.func.functional_call(m, live, (self.inputs[i, j],))
                    vjp = torch.autograd.grad(out, list(live.values()), g * w.to(g.dtype).view(-1, *[1] * (g.dim() - 1)))
                for k, d in zip(names, vjp):
                    p = getattr(m, k)
                    p.grad = d if p.grad is None else p.grad + d

    def clear(self) -> None:
        self.inputs.clear()
        self.grads.clear()


@dataclass
class DeviceDP:
    """One device's share of its client's DP-SGD (see the module docstring)."""

    stage: nn.Module
    clip: float  # C
    batch_size: int  # B, the expected Poisson batch
    head: str  # the client's data device
    peers: tuple[str, ...]  # on the data device: the client's other devices; elsewhere ()
    normal: Callable[[torch.Size, torch.dtype], torch.Tensor]  # secure standard normals
    sigma: float | None = None  # SIGMA, set when the run starts
    per_sample: PerSample = field(init=False)

    def __post_init__(self) -> None:
        self.per_sample = PerSample(self.stage)

    def exchange(self, me: str, t, norms: torch.Tensor, *, timeout_s: float | None) -> torch.Tensor:
        """The clip factors ``c`` of this step's real samples, agreed over the client: the
        data device sums every device's squared norms and hands ``c`` back."""
        if me != self.head:
            t.send(me, self.head, norms, tag=NORMS)
            return t.recv(me, self.head, tag=SCALE, timeout_s=timeout_s, stoppable=True)
        for d in self.peers:
            norms = norms + t.recv(me, d, tag=NORMS, timeout_s=timeout_s, stoppable=True)
        per_sample_norm = norms.sqrt() * self.batch_size  # the loss carries 1 / B
        factors = (self.clip / per_sample_norm.clamp_min(1e-300)).clamp(max=1.0)
        for d in self.peers:
            t.send(me, d, factors, tag=SCALE)
        return factors

    def apply(self, counts: list[int], factors: torch.Tensor) -> None:
        """``.grad`` becomes the private gradient: the real rows' gradients clipped
        (``c_r - 1`` of each added to the batch gradient), plus ``N(0, (SIGMA C / B)^2)``."""
        self.per_sample.add_scaled(counts, factors - 1.0)
        self.per_sample.clear()
        std = self.sigma * self.clip / self.batch_size
        for p in self.stage.parameters():
            if p.requires_grad:
                noise = self.normal(p.shape, p.dtype) * std
                p.grad = noise if p.grad is None else p.grad + noise
