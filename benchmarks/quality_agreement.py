"""One-off check (issue 15): torchmetrics' FID and KID against the hand-written statistics
that ``trainer/quality/fid.py`` had before it used torchmetrics, on the same features.

The former module is read from git (``BEFORE``, the last commit with the hand-written
code) into a throwaway module; both evaluators use the same cached classifier, the same
real reference and the same fake sets. KID subsets are drawn by different generators
(numpy then, torch now), so KID is also compared with one subset holding every row,
where the two agree to float32 rounding (KID runs on float32 features now).

    python benchmarks/quality_agreement.py
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `fsl` sets it (cli.py)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.common import ROOT, machine, md_table, write_section  # noqa: E402
from trainer.data.datasets import load_digits_28  # noqa: E402
from trainer.quality.fid import QualityEvaluator, kernel_inception_distance  # noqa: E402

BEFORE = "fd9672f"  # main when issue 15 started: trainer/quality/fid.py computed FID/KID by hand


def _old_module():
    source = subprocess.run(["git", "show", f"{BEFORE}:trainer/quality/fid.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "quality_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("quality_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def fake_sets(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Fakes from near-real to far: another draw of reals (digits has 1797 images, so it
    overlaps the 1000 reference ones), blurred, noised, shuffled pixels, noise."""
    g = torch.Generator().manual_seed(2)  # the evaluator draws its reals with seed 1
    held = images[torch.randperm(len(images), generator=g)[:1000]]
    blur = F.avg_pool2d(held, 3, stride=1, padding=1)
    noisy = (held + 0.5 * torch.randn(held.shape, generator=g)).clamp(-1, 1)
    pixels = held.flatten(1)[:, torch.randperm(784, generator=g)].view_as(held)
    return {"another draw of reals": held, "blurred real": blur, "real + noise 0.5": noisy,
            "pixel-shuffled real": pixels, "uniform noise": torch.rand(held.shape, generator=g) * 2 - 1}


def main() -> None:
    old = _old_module()
    digits = load_digits_28()
    cache = Path(tempfile.mkdtemp())
    new_eval = QualityEvaluator(digits, cache_dir=cache)
    old_eval = old.QualityEvaluator(digits, cache_dir=cache)  # same cache: the same classifier
    assert old_eval.classifier.origin == "cache"
    rows, worst_fid, seconds = [], 0.0, {"before": [], "torchmetrics": []}
    for name, fakes in fake_sets(digits.images).items():
        for _ in range(3):  # alternate, so drift on this shared machine hits both alike
            for label, ev in (("before", old_eval), ("torchmetrics", new_eval)):
                t0 = time.perf_counter()
                ev.evaluate(fakes)
                seconds[label].append(time.perf_counter() - t0)
        a, b = old_eval.evaluate(fakes), new_eval.evaluate(fakes)
        feats = new_eval.classifier.features(fakes)
        exact_old = old.kernel_inception_distance(feats, old_eval.real_features, subsets=1, subset_size=10**6)[0]
        exact_new = kernel_inception_distance(feats, old_eval.real_features, subsets=1, subset_size=10**6)[0]
        rel = abs(b["fid"] - a["fid"]) / max(abs(a["fid"]), 1e-12)
        worst_fid = max(worst_fid, rel)
        rows.append([name, f"{a['fid']:.6g}", f"{b['fid']:.6g}", f"{abs(b['fid'] - a['fid']):.1e}", f"{rel:.1e}",
                     f"{a['kid']:.5f} ± {a['kid_std']:.5f}", f"{b['kid']:.5f} ± {b['kid_std']:.5f}",
                     f"{exact_old:.6f} / {abs(exact_new - exact_old):.1e}",
                     f"{a['class_score']:.4f} / {b['class_score']:.4f}"])
    table = md_table(["fakes (1000)", "FID before", "FID torchmetrics", "FID abs. diff", "FID rel. diff",
                      "KID before (50 subsets of 500)", "KID torchmetrics", "KID, one subset of all rows: before / abs. diff",
                      "class score before / now"], rows)
    body = (f"## FID and KID: torchmetrics against the former hand-written statistics\n\n"
            f"Machine: {machine()}. Command: `python benchmarks/quality_agreement.py` (the former code is "
            f"`git show {BEFORE}:trainer/quality/fid.py`). Same classifier, same 1000 real images, same fakes.\n\n"
            f"{table}\n\nLargest FID relative difference: {worst_fid:.1e}. KID with 50 random subsets differs "
            "only by which rows the subsets draw (numpy before, torch now); with one subset of every row "
            "both compute the same unbiased MMD^2 (to float32 rounding: KID now runs in float32).\n\n"
            f"`evaluate` on 1000 fakes (FID, KID, class scores), median of {len(seconds['before'])} calls: "
            f"{statistics.median(seconds['before']):.3f} s before, "
            f"{statistics.median(seconds['torchmetrics']):.3f} s with torchmetrics.\n")
    print(body)
    write_section("quality-agreement", body)


if __name__ == "__main__":
    main()
