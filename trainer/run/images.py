"""Image grids as PNG files (PIL only, no torchvision)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def grid_array(images: torch.Tensor, *, nrow: int = 8, padding_px: int = 2,
               pad_value: float = -1.0) -> np.ndarray:
    """uint8 [H', W'] (1 channel) or [H', W', 3] grid of images [N, C, H, W] in [-1, 1],
    ``nrow`` images per row, ``padding_px`` pixels of ``pad_value`` between and around."""
    if images.ndim != 4 or images.shape[1] not in (1, 3) or len(images) == 0:
        raise ValueError(f"expected images [N >= 1, 1 or 3, H, W], got "
                         f"{tuple(images.shape)}")
    if nrow < 1 or padding_px < 0:
        raise ValueError(f"need nrow >= 1 and padding_px >= 0, got {nrow}, {padding_px}")
    n, c, h, w = images.shape
    cols = min(nrow, n)
    rows = -(-n // cols)
    step_h, step_w = h + padding_px, w + padding_px
    canvas = torch.full((c, rows * step_h + padding_px, cols * step_w + padding_px),
                        float(pad_value))
    x = images.detach().cpu().float()
    for k in range(n):
        top, left = padding_px + (k // cols) * step_h, padding_px + (k % cols) * step_w
        canvas[:, top : top + h, left : left + w] = x[k]
    pixels = ((canvas.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels[0].numpy() if c == 1 else pixels.permute(1, 2, 0).numpy()


def save_grid(images: torch.Tensor, path: str | Path, *, nrow: int = 8, scale: int = 2,
              padding_px: int = 2) -> None:
    """Write images [N, 1|3, H, W] in [-1, 1] as one PNG grid, each pixel drawn as a
    ``scale`` x ``scale`` block; atomically (temp file in the same folder + os.replace),
    creating the folder if needed."""
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    picture = Image.fromarray(grid_array(images, nrow=nrow, padding_px=padding_px))
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale),
                                 Image.Resampling.NEAREST)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.",
                               suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            picture.save(f, format="PNG")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
