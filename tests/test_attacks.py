"""The attacks of benchmarks/privacy.py against cases whose answer is known."""

from __future__ import annotations

import torch

from benchmarks.attacks import gan_leaks_auc, nearest_distance, reconstruction_scores, ssim


def test_ssim_is_one_for_equal_images_and_falls_with_noise():
    x = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(ssim(x, x), torch.ones(4, dtype=torch.float64))
    light = ssim(x, (x + 0.05 * torch.randn_like(x)).clamp(0, 1)).mean()
    heavy = ssim(x, (x + 0.5 * torch.randn_like(x)).clamp(0, 1)).mean()
    assert 1 > light > heavy
    # a constant shift of the mean changes only the luminance term: (2 mu_a mu_b + c1) / (mu_a^2 + mu_b^2 + c1)
    a, b = torch.full((1, 1, 11, 11), 0.2), torch.full((1, 1, 11, 11), 0.6)
    want = (2 * 0.2 * 0.6 + 1e-4) / (0.2**2 + 0.6**2 + 1e-4)
    assert abs(ssim(a, b).item() - want) < 1e-6  # 0.2 and 0.6 in float32


def test_gan_leaks_sees_a_generator_that_memorised():
    members, non_members = torch.randn(50, 1, 8, 8), torch.randn(50, 1, 8, 8)
    assert gan_leaks_auc(members, non_members, members + 0.01 * torch.randn_like(members)) == 1.0
    fresh = torch.randn(400, 1, 8, 8)  # a generator of the distribution, not of the records
    assert abs(gan_leaks_auc(members, non_members, fresh) - 0.5) < 0.2
    d = nearest_distance(members[:3], torch.cat([members[:3] + 1.0, members[1:2]]))
    assert d[1] == 0 and d[0] > 0


def test_reconstruction_scores_are_on_the_unit_scale():
    x = torch.rand(5, 1, 28, 28) * 2 - 1
    mse, s = reconstruction_scores(x, x)
    assert mse == 0 and abs(s - 1) < 1e-12
    mse, _ = reconstruction_scores(torch.full_like(x, -1), torch.full_like(x, 1))
    assert mse == 1.0  # black against white
