"""Discriminators as ordered layers, and the DCGAN generator.

A :class:`LayeredModel` is a list of named nodes in execution order; each node reads
the outputs of earlier nodes (the previous one unless ``inputs`` says otherwise), so a
plan may cut between any two layers where one tensor carries everything forward. The
layer graph (``planner.graph``) derives those legal cuts from ``inputs``.

The seed discriminator and generator follow the DCGAN of the FSL-GAN paper (Software
Impacts 2022), itself the TensorFlow DCGAN tutorial on MNIST: parts A/B/C hold 1,664 /
204,928 / 823,553 parameters.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


def dcgan_init(module: nn.Module) -> nn.Module:
    """DCGAN's initialisation (Radford et al. 2016, section 4): weights N(0, 0.02),
    batch-norm scales N(1, 0.02), biases 0. With PyTorch's default initialisation the
    discriminator wins within 50 steps on the digits and the generator collapses."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
    return module


class SeededDropout(nn.Module):
    """Dropout whose masks come from its own ``torch.Generator``, drawn sample by sample.

    Each device owns its randomness, so results do not depend on how threads or
    processes interleave, and the generator state is checkpointed with the weights.

    A batch's masks: one number ``base`` is drawn from ``generator`` per batch, and
    sample ``r``'s mask from a generator seeded with ``base + r``. A trainer that runs a
    batch in pieces (micro-batches) or runs a piece twice (recomputation in the backward
    pass) sets ``window = (rows, full, fresh)``: ``fresh`` starts a new batch of ``full``
    samples (a new ``base``), and the piece is that batch's ``rows``. Micro-batched and
    recomputed steps then drop exactly what the whole batch would have dropped, and each
    micro-batch draws only its own rows' masks: the first one does not pay for the whole
    batch's (a pipeline fills behind it). ``window = None`` starts a batch per call.
    """

    def __init__(self, p: float, seed: int = 0):
        super().__init__()
        self.p = p
        self.generator = torch.Generator().manual_seed(seed)
        self.window: tuple[torch.Tensor, int, bool] | None = None
        self._base = 0
        self._rows = torch.Generator()

    def reseed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        rows, fresh = (range(x.shape[0]), True) if self.window is None else (self.window[0].tolist(), self.window[2])
        if fresh:
            self._base = int(torch.randint(2**62, (1,), generator=self.generator))
        keep = torch.empty(x.shape, dtype=x.dtype)
        for j, r in enumerate(rows):
            self._rows.manual_seed(self._base + r)
            torch.rand(x.shape[1:], generator=self._rows, dtype=x.dtype, out=keep[j])
        return x * (keep >= self.p) / (1.0 - self.p)


class Add(nn.Module):
    """The join of a residual block: ``a + b``."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


@dataclass(frozen=True)
class Node:
    name: str  # unique layer name, e.g. "conv1"
    inputs: tuple[int, ...]  # indices of earlier nodes read; -1 is the model input


class LayeredModel(nn.Module):
    """A model as ordered layers ``0..L-1``; ``segment(a, b)`` runs layers ``a..b-1``."""

    def __init__(self, name: str, input_shape: Sequence[int], layers: Sequence[tuple]):
        """``layers``: ``(name, module)`` or ``(name, module, inputs)`` tuples."""
        super().__init__()
        self.model_name = name
        self.input_shape = tuple(input_shape)
        self.layers = nn.ModuleList()
        self.nodes: list[Node] = []
        for i, spec in enumerate(layers):
            layer_name, module = spec[0], spec[1]
            inputs = tuple(spec[2]) if len(spec) > 2 else (i - 1,)
            assert all(-1 <= j < i for j in inputs), f"{layer_name} reads a later layer"
            self.layers.append(module)
            self.nodes.append(Node(layer_name, inputs))

    @classmethod
    def from_module(cls, name: str, module: nn.Module, example_input: torch.Tensor) -> "LayeredModel":
        """Wrap any ``nn.Sequential`` (its children in order) or a single module as a chain.

        ``example_input`` is one batch; its per-sample shape becomes ``input_shape``.
        """
        children = list(module.named_children()) if isinstance(module, nn.Sequential) else [("layer0", module)]
        if not children:
            raise ValueError(f"{name}: an empty Sequential has no layers to place")
        return cls(name, tuple(example_input.shape[1:]), [(n.replace(".", "_"), m) for n, m in children])

    def __len__(self) -> int:
        return len(self.nodes)

    @property
    def layer_names(self) -> list[str]:
        return [n.name for n in self.nodes]

    def run(self, x: torch.Tensor, start: int = 0, end: int | None = None) -> torch.Tensor:
        """Run layers ``start..end-1``; ``x`` is the output of layer ``start - 1``.

        Valid only where the cut before ``start`` is legal (no other tensor crosses it).
        """
        end = len(self.nodes) if end is None else end
        values: dict[int, torch.Tensor] = {start - 1: x}
        for i in range(start, end):
            values[i] = self.layers[i](*(values[j] for j in self.nodes[i].inputs))
        return values[end - 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)

    def segment(self, start: int, end: int) -> "Segment":
        return Segment(self, start, end)

    def fingerprint(self) -> str:
        """sha256 of the architecture (names, wiring, module reprs, shapes), not weights."""
        h = hashlib.sha256()
        h.update(f"{self.model_name}|{self.input_shape}".encode())
        for node, module in zip(self.nodes, self.layers):
            shapes = [tuple(p.shape) for p in module.parameters()]
            h.update(f"|{node.name}:{node.inputs}:{module!r}:{shapes}".encode())
        return "sha256:" + h.hexdigest()


class Segment(nn.Module):
    """Layers ``start..end-1`` of a :class:`LayeredModel`, sharing its modules."""

    def __init__(self, model: LayeredModel, start: int, end: int):
        super().__init__()
        self.start, self.end = start, end
        self.nodes = model.nodes
        self.layers = nn.ModuleDict({str(i): model.layers[i] for i in range(start, end)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values: dict[int, torch.Tensor] = {self.start - 1: x}
        for i in range(self.start, self.end):
            values[i] = self.layers[str(i)](*(values[j] for j in self.nodes[i].inputs))
        return values[self.end - 1]


def _conv_block(prefix: str, cin: int, cout: int, *, k=5, s=2, p=2, dropout=0.3) -> list:
    out = [
        (f"{prefix}conv", nn.Conv2d(cin, cout, k, s, p)),
        (f"{prefix}lrelu", nn.LeakyReLU(0.2)),
    ]
    if dropout:
        out.append((f"{prefix}drop", SeededDropout(dropout)))
    return out


def dcgan_discriminator() -> LayeredModel:
    """The seed's discriminator for 28x28x1: 11 layers, seed parts A/B/C at 0/3/6."""
    layers = (
        _conv_block("a_", 1, 64)
        + _conv_block("b_", 64, 128)
        + _conv_block("c_", 128, 256)
        + [("c_flatten", nn.Flatten()), ("c_dense", nn.Linear(256 * 4 * 4, 1))]
    )
    return LayeredModel("dcgan", (1, 28, 28), layers)


def dcgan64_discriminator() -> LayeredModel:
    """A deeper DCGAN discriminator for 64x64x1: five conv blocks, 14 layers."""
    widths = [1, 32, 64, 128, 256, 512]
    layers = []
    for i in range(5):
        layers += _conv_block(f"b{i + 1}_", widths[i], widths[i + 1], k=4, s=2, p=1,
                              dropout=0.2 if i >= 3 else 0.0)
    layers += [("flatten", nn.Flatten()), ("dense", nn.Linear(512 * 2 * 2, 1))]
    return LayeredModel("dcgan64", (1, 64, 64), layers)


def resnet_discriminator() -> LayeredModel:
    """A residual discriminator for 28x28x1; cuts inside a block are illegal.

    Each block ``y = lrelu(x + conv(lrelu(conv(x))))`` keeps ``x`` alive across three
    layers, so only the cuts between blocks carry a single tensor.
    """
    layers: list[tuple] = [("stem_conv", nn.Conv2d(1, 32, 3, 1, 1)), ("stem_lrelu", nn.LeakyReLU(0.2))]

    def block(prefix: str, ch: int) -> None:
        entry = len(layers) - 1  # the block's input
        layers.extend([
            (f"{prefix}conv1", nn.Conv2d(ch, ch, 3, 1, 1)),
            (f"{prefix}lrelu1", nn.LeakyReLU(0.2)),
            (f"{prefix}conv2", nn.Conv2d(ch, ch, 3, 1, 1)),
        ])
        layers.append((f"{prefix}add", Add(), (len(layers) - 1, entry)))
        layers.append((f"{prefix}lrelu2", nn.LeakyReLU(0.2)))

    block("res1_", 32)
    layers += [("down1_conv", nn.Conv2d(32, 64, 4, 2, 1)), ("down1_lrelu", nn.LeakyReLU(0.2))]  # 14
    block("res2_", 64)
    layers += [("down2_conv", nn.Conv2d(64, 128, 4, 2, 1)), ("down2_lrelu", nn.LeakyReLU(0.2))]  # 7
    block("res3_", 128)
    layers += [("drop", SeededDropout(0.3)), ("flatten", nn.Flatten()), ("dense", nn.Linear(128 * 7 * 7, 1))]
    return LayeredModel("resnet", (1, 28, 28), layers)


DISCRIMINATORS = {
    "dcgan": dcgan_discriminator,
    "dcgan64": dcgan64_discriminator,
    "resnet": resnet_discriminator,
}

# Where the seed paper's hand-cut parts A, B, C start, per model (layer indices).
SEED_PARTS = {"dcgan": (0, 3, 6)}


def build_discriminator(name: str) -> LayeredModel:
    """A fresh discriminator with DCGAN's initialisation (draws from torch's global RNG)."""
    if name not in DISCRIMINATORS:
        raise KeyError(name)
    return dcgan_init(DISCRIMINATORS[name]())


class Generator(nn.Module):
    """The seed's DCGAN generator: z (100) -> Dense 7x7x256 -> ConvT 128 -> 64 -> 1, tanh.

    ``image_size`` 64 starts from 4x4 and adds one upsampling step per doubling.
    """

    def __init__(self, image_size: int = 28, z_dim: int = 100):
        super().__init__()
        self.z_dim = z_dim
        base = {28: 7, 64: 4}[image_size]
        ups = {28: [256, 128, 64], 64: [512, 256, 128, 64, 32]}[image_size]
        self.base, self.width = base, ups[0]
        self.project = nn.Sequential(
            nn.Linear(z_dim, base * base * ups[0], bias=False),
            nn.BatchNorm1d(base * base * ups[0]),
            nn.LeakyReLU(0.2),
        )
        body: list[nn.Module] = [  # the seed keeps 7x7 for its first transposed conv
            nn.ConvTranspose2d(ups[0], ups[1], 5, 1, 2, bias=False), nn.BatchNorm2d(ups[1]), nn.LeakyReLU(0.2)
        ]
        for cin, cout in zip(ups[1:-1], ups[2:]):
            body += [nn.ConvTranspose2d(cin, cout, 5, 2, 2, output_padding=1, bias=False),
                     nn.BatchNorm2d(cout), nn.LeakyReLU(0.2)]
        body += [nn.ConvTranspose2d(ups[-1], 1, 5, 2, 2, output_padding=1, bias=False), nn.Tanh()]
        self.body = nn.Sequential(*body)
        dcgan_init(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.project(z).view(-1, self.width, self.base, self.base)
        return self.body(h)
