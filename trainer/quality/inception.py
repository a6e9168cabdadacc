"""The standard FID (Heusel et al. 2017, Sec. 4) on Inception-v3's 2048 pool features,
for ``--fid-inception WEIGHTS.pth``: torchmetrics' ``FrechetInceptionDistance(feature=
2048)`` with ``feature_extractor_weights_path`` the file the user already has, the FID
Inception of TensorFlow's reference code as torch-fidelity ports it
(``pt_inception-2015-12-05-6726825d.pth``). Nothing is downloaded.

Images in [-1, 1] go in as [0, 1] (``normalize=True``: torchmetrics turns them into
uint8 and the network resizes them to 299x299); grayscale is repeated to 3 channels.
The reference is the held-out split, so with few held-out images the figure carries
FID's small-sample bias (it falls as the sets grow) and compares runs on one folder;
published FIDs use 50,000 samples.

What it needs, refused with one line (``InputError``, exit 2) where missing:
- torch-fidelity, whose network torchmetrics runs; torch-fidelity's package imports
  torchvision, so torchvision must import too (``pip install 'fsl-gan[inception]'``);
- a file that ``torch.load(weights_only=True)`` reads (tensors only: torch-fidelity
  itself loads it with ``weights_only=False``, so nothing else reaches that load) and
  whose tensors are exactly the network's.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torchmetrics.image.fid import FrechetInceptionDistance

from planner.errors import InputError
from trainer.quality.fid import LOCAL

OPTION = "--fid-inception"
WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"
BATCH = 50  # images per pass: 299x299 activations of 50 images take about 300 MB


def check_weights(path: Path) -> None:
    """InputError unless ``path`` is a file of tensors only (module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(str(path), None, f"{OPTION}: no such file" if not path.exists() else f"{OPTION}: not a file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - whatever torch cannot read safely is the user's file at fault
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(str(path), None, f"{OPTION}: not a file of tensors that torch.load(weights_only=True) "
                         f"reads ({why[:200]}); expected {WEIGHTS}") from None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(str(path), None, f"{OPTION}: holds no state dict of tensors; expected {WEIGHTS}")


def inception_fid(path: Path) -> FrechetInceptionDistance:
    """torchmetrics' FID on the Inception of ``path``, real statistics kept across resets."""
    check_weights(path)
    try:
        return FrechetInceptionDistance(feature=2048, normalize=True, reset_real_features=False,
                                        feature_extractor_weights_path=str(path), **LOCAL)
    except ImportError as e:  # ModuleNotFoundError too: torchmetrics' own message when torch-fidelity is absent
        raise InputError(OPTION, None, "torchmetrics computes the standard FID with torch-fidelity's Inception, "
                         "which does not import here (torch-fidelity, and the torchvision it imports, must both "
                         f"install: pip install 'fsl-gan[inception]'): {str(e).splitlines()[0][:160]}") from None
    except RuntimeError as e:  # load_state_dict: missing, unexpected or misshapen tensors
        lines = [x.strip() for x in str(e).splitlines() if x.strip()]
        raise InputError(str(path), None, f"{OPTION}: not the FID Inception's weights ({WEIGHTS}): "
                         f"{' '.join(lines[:2])[:200]}") from None


def as_unit_rgb(images: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] in [0, 1] from [N, 1 or 3, H, W] in [-1, 1]."""
    x = ((images.detach().cpu().float() + 1) / 2).clamp(0, 1)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


class InceptionFID:
    """The held-out images' Inception statistics computed once; ``evaluate`` scores fakes."""

    def __init__(self, path: Path, real_images: torch.Tensor):
        self.metric = inception_fid(path)
        self._update(real_images, real=True)

    def _update(self, images: torch.Tensor, *, real: bool) -> None:
        x = as_unit_rgb(images)
        with torch.no_grad():
            for i in range(0, len(x), BATCH):
                self.metric.update(x[i:i + BATCH], real=real)

    def evaluate(self, fake_images: torch.Tensor) -> float:
        """FID between the held-out images and ``fake_images`` [N >= 2, C, H, W] in [-1, 1]."""
        self.metric.reset()  # drops the last fakes, keeps the real statistics
        self._update(fake_images, real=False)
        return max(float(self.metric.compute()), 0.0)  # rounding can leave a tiny negative value
