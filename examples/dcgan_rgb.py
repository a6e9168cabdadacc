"""A user-defined GAN for 64x64 RGB images: a small DCGAN (Radford et al. 2016).

Nothing here is part of fsl-gan; it is the kind of file a user writes. ``fsl plan
--model examples/dcgan_rgb.py:build`` executes this file and calls ``build()``, which
returns the dict of the factory contract (README: your own model):

- ``discriminator``: an ``nn.Sequential``; each child is a layer the planner may place
  on another device, so name them (the plan's tables show the names);
- ``input_shape``: (C, H, W) of one image; 3 channels: image folders are read as RGB;
- ``generator``: z [N, z_dim] -> images [N, 3, 64, 64] in [-1, 1] (tanh);
- ``z_dim``: the noise size.

The discriminator returns one logit per image ([N, 1], no sigmoid). Weights are drawn
from torch's random state, which the trainer seeds before each call. Widths are small
(16-128 channels), so a few rounds run on a laptop's CPU.
"""

from collections import OrderedDict

from torch import nn

Z_DIM = 64


def dcgan_init(module: nn.Module) -> nn.Module:
    """DCGAN's initialisation (section 4): weights N(0, 0.02), batch-norm scales N(1, 0.02)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
    return module


def discriminator() -> nn.Sequential:
    """64x64x3 -> 32 -> 16 -> 8 -> 4 -> one logit; 10 layers."""
    layers = OrderedDict()
    widths = [3, 16, 32, 64, 128]
    for i in range(4):
        layers[f"conv{i + 1}"] = nn.Conv2d(widths[i], widths[i + 1], 4, 2, 1)
        layers[f"lrelu{i + 1}"] = nn.LeakyReLU(0.2)
    layers["flatten"] = nn.Flatten()
    layers["dense"] = nn.Linear(128 * 4 * 4, 1)
    return nn.Sequential(layers)


def generator(z_dim: int = Z_DIM) -> nn.Sequential:
    """z -> 4x4x128 -> 8 -> 16 -> 32 -> 64x64x3, tanh."""
    def up(cin: int, cout: int) -> list[nn.Module]:
        return [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(
        nn.Unflatten(1, (z_dim, 1, 1)),
        nn.ConvTranspose2d(z_dim, 128, 4, 1, 0, bias=False), nn.BatchNorm2d(128), nn.ReLU(),  # 4x4
        *up(128, 64), *up(64, 32), *up(32, 16),  # 8, 16, 32
        nn.ConvTranspose2d(16, 3, 4, 2, 1), nn.Tanh(),  # 64
    )


def build() -> dict:
    return {"discriminator": dcgan_init(discriminator()), "input_shape": (3, 64, 64),
            "generator": dcgan_init(generator()), "z_dim": Z_DIM}
