"""What the image folders' quality measure sees (issue 16): ``trainer.quality.pixelkid.PixelKID``
against the held-out split of ``examples/make_shapes.py`` folders, scoring sets whose
faults are known: other real shapes, one class only, blurred, grayscale, dimmed, noise,
blank. The numbers quoted in ``trainer/quality/pixelkid.py`` and docs/own-data.md come from here.

    python benchmarks/pixel_kid.py

Held-out: 20 % of 450 shapes (seed 0), 90 images. The scored sets come from another
folder (seed 2): its 408 images outside its own held-out split, or their 130 circles;
noise and blank sets hold 500 images.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.common import ROOT, machine, md_table, write_section  # noqa: E402
from trainer.data.datasets import DataSource  # noqa: E402
from trainer.quality.pixelkid import PixelKID  # noqa: E402


def load_make_shapes():
    spec = importlib.util.spec_from_file_location("make_shapes", ROOT / "examples" / "make_shapes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_shapes


def main() -> None:
    torch.set_num_threads(1)
    make_shapes = load_make_shapes()
    with tempfile.TemporaryDirectory() as tmp:
        make_shapes(Path(tmp) / "a", per_class=150, seed=0)
        make_shapes(Path(tmp) / "b", per_class=170, seed=2)
        held_out = DataSource.of(f"images:{tmp}/a", None, None, 0, (3, 64, 64)).held_out()
        other = DataSource.of(f"images:{tmp}/b", None, None, 0, (3, 64, 64)).client_data([1.0], 0, "b")
    real = other.images
    cases = {
        "other real shapes": real,
        "circles only": other.images[other.labels == 0],
        "blurred (9x9 box)": F.avg_pool2d(real, 9, 1, 4),
        "grayscale copies": real.mean(1, keepdim=True).expand(-1, 3, -1, -1).contiguous(),
        "dimmed by half": (real + 1) * 0.5 - 1,
        "uniform noise": torch.rand(500, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1,
        "blank (all 0)": torch.zeros(500, 3, 64, 64),
    }
    kid = PixelKID(held_out, seed=0)
    rows = []
    for name, images in cases.items():
        m = kid.evaluate(images)
        rows.append([name, len(images), f"{m['kid']:.3f}", f"{m['kid_std']:.3f}"])
        print(f"{name:20s} {len(images):4d}  KID {m['kid']:.3f} +- {m['kid_std']:.3f}")
    body = (f"## Image folders: what KID on pixel statistics sees\n\n`python benchmarks/pixel_kid.py` on "
            f"{machine()}. Held-out split: {len(held_out)} shapes of `examples/make_shapes.py` (seed 0); "
            "each row a set from another folder (seed 2); KID mean and std over 50 subsets "
            f"(`trainer/quality/pixelkid.py`: {kid.evaluate(real)['quality_features']}).\n\n"
            + md_table(["scored set", "images", "KID", "std"], rows))
    write_section("pixel-kid", body)


if __name__ == "__main__":
    main()
