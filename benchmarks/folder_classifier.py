"""What the folder classifier's FID sees (issue 25): ``trainer.quality.fid.QualityEvaluator``
on the held-out split of the shapes example's folder (``examples/make_shapes.py
--per-class 1000``, seed 0: 600 held-out images, the classifier trained on 480 of them
and tested on 120), scoring sets whose faults are known. The scale quoted in
docs/own-data.md comes from here.

    python benchmarks/folder_classifier.py

Scored: 500 images of the folder's training pool (never seen by the classifier), their
grayscale copies, their circles only, and 500 images of uniform noise.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.pixel_kid import load_make_shapes  # noqa: E402
from planner.profile_cache import cache_dir  # noqa: E402
from trainer.data.datasets import DataSource  # noqa: E402
from trainer.quality.fid import QualityEvaluator  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        load_make_shapes()(Path(tmp) / "shapes", per_class=1000, seed=0)
        src = DataSource.of(f"images:{tmp}/shapes", None, None, 0, (3, 64, 64))
        held_out, pool = src.held_out(), src.client_data([1.0], 0, "pool")
    quality = QualityEvaluator(held_out, cache_dir=cache_dir() / "classifier", seed=0)
    clf = quality.classifier
    print(f"classifier: {clf.origin}, accuracy {clf.test_accuracy:.3f} on {clf.test_images} held-out images")
    real = pool.images[torch.randperm(len(pool), generator=torch.Generator().manual_seed(5))[:500]]
    cases = {
        "real (training pool)": real,
        "grayscale copies": real.mean(1, keepdim=True).expand(-1, 3, -1, -1).contiguous(),
        "circles only": pool.images[pool.labels == 0][:500],
        "uniform noise": torch.rand(500, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1,
    }
    for name, images in cases.items():
        m = quality.evaluate(images)
        print(f"{name:22s} {len(images):4d}  FID {m['fid']:8.3f}  KID {m['kid']:7.3f} +- {m['kid_std']:.3f}  "
              f"confidence {m['confidence']:.3f}")


if __name__ == "__main__":
    main()
