"""Draw a small image folder to train on: coloured shapes, one subfolder per class.

    python examples/make_shapes.py runs/shapes --per-class 60

writes ``runs/shapes/{circle,square,triangle}/NNNN.png``: 64x64 RGB, one filled shape of
a random colour, size and place on a random dark background, drawn with PIL (no
download). The class folders become labels (``--alpha`` splits clients by them). Same
``--seed``, same images.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle")


def draw(kind: str, rng: random.Random, size: int) -> Image.Image:
    background = tuple(rng.randint(0, 60) for _ in range(3))
    colour = tuple(rng.randint(120, 255) for _ in range(3))
    img = Image.new("RGB", (size, size), background)
    r = rng.uniform(0.18, 0.32) * size  # half the shape's width
    cx, cy = (rng.uniform(r + 2, size - r - 2) for _ in range(2))
    pen = ImageDraw.Draw(img)
    if kind == "circle":
        pen.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif kind == "square":
        pen.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
    else:
        pen.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=colour)
    return img


def make_shapes(out: Path, *, per_class: int, size: int = 64, seed: int = 0) -> int:
    """Write ``per_class`` images of each class under ``out``; returns how many."""
    rng = random.Random(seed)
    for kind in CLASSES:
        folder = out / kind
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            draw(kind, rng, size).save(folder / f"{i:04d}.png")
    return per_class * len(CLASSES)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="the folder to write (created)")
    ap.add_argument("--per-class", type=int, default=60, help="images per class")
    ap.add_argument("--size", type=int, default=64, help="width and height in pixels")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    n = make_shapes(args.out, per_class=args.per_class, size=args.size, seed=args.seed)
    print(f"wrote {n} images of {args.size}x{args.size} to {args.out}/{{{','.join(CLASSES)}}}/")


if __name__ == "__main__":
    main()
