"""The attacks of benchmarks/privacy.py and benchmarks/fsha.py against cases whose answer
is known without the code under test: pairwise rank counts for the AUC, least squares for
the reconstruction distance of a linear generator, closed forms for SSIM and PSNR.

Null cases (a generator independent of members and non-members) are checked against the
Mann-Whitney null distribution of the AUC: mean 1/2, variance (n1 + n2 + 1) / (12 n1 n2)
(Hanley and McNeil, Radiology 1982, eq. 1 with A = 1/2); with 200 + 200 records the
standard deviation is 0.0289 and the fixed range below is +-4 of them."""

from __future__ import annotations

import math
import numpy as np
import torch
from torch import nn

from benchmarks.attacks import (frozen_for_queries, gan_leaks_auc, membership_auc, nearest_distance,
                                reconstruction_distance, reconstruction_scores, ssim)

N = 200
NULL_SD = ((N + N + 1) / (12 * N * N)) ** 0.5
NULL_RANGE = (0.5 - 4 * NULL_SD, 0.5 + 4 * NULL_SD)  # (0.3844, 0.6156)


def pairwise_auc(d_members: np.ndarray, d_non_members: np.ndarray) -> float:
    """P(member closer than non-member), ties counted half: the AUC by its definition."""
    wins = sum(float(a < b) + 0.5 * float(a == b) for a in d_members for b in d_non_members)
    return wins / (len(d_members) * len(d_non_members))


class LinearGenerator(nn.Module):
    """G(z) = z W, shaped as 1x8x8 images: its outputs are exactly the span of W's rows."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.z_dim = w.shape[0]
        self.register_buffer("w", w)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (z @ self.w).view(-1, 1, 8, 8)


def span_residual(w: torch.Tensor, records: torch.Tensor) -> np.ndarray:
    """min_z ||z W - x|| by numpy's least squares: the exact reconstruction distance."""
    a, b = w.double().numpy().T, records.flatten(1).double().numpy().T
    z = np.linalg.lstsq(a, b, rcond=None)[0]
    return np.linalg.norm(a @ z - b, axis=0)


def test_ssim_is_one_for_equal_images_and_falls_with_noise():
    torch.manual_seed(0)
    x = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(ssim(x, x), torch.ones(4, dtype=torch.float64))
    light = ssim(x, (x + 0.05 * torch.randn_like(x)).clamp(0, 1)).mean()
    heavy = ssim(x, (x + 0.5 * torch.randn_like(x)).clamp(0, 1)).mean()
    assert 1 > light > heavy
    # a constant shift of the mean changes only the luminance term: (2 mu_a mu_b + c1) / (mu_a^2 + mu_b^2 + c1)
    a, b = torch.full((1, 1, 11, 11), 0.2), torch.full((1, 1, 11, 11), 0.6)
    want = (2 * 0.2 * 0.6 + 1e-4) / (0.2**2 + 0.6**2 + 1e-4)
    assert abs(ssim(a, b).item() - want) < 1e-6  # 0.2 and 0.6 in float32


def test_black_box_auc_is_the_pairwise_rank_count_and_chance_for_a_fresh_generator():
    g = torch.Generator().manual_seed(0)
    members, non_members = torch.randn(N, 1, 8, 8, generator=g), torch.randn(N, 1, 8, 8, generator=g)
    fresh = torch.randn(400, 1, 8, 8, generator=g)  # a generator of the distribution, not of the records
    auc = gan_leaks_auc(members, non_members, fresh)

    def nearest(x: torch.Tensor) -> np.ndarray:  # numpy, independently of torch.cdist
        diff = x.flatten(1).double().numpy()[:, None, :] - fresh.flatten(1).double().numpy()[None]
        return np.sqrt((diff**2).sum(-1)).min(1)

    assert abs(auc - pairwise_auc(nearest(members), nearest(non_members))) < 1e-12
    assert NULL_RANGE[0] < auc < NULL_RANGE[1]
    memorised = members + 0.01 * torch.randn(members.shape, generator=g)
    assert gan_leaks_auc(members, non_members, memorised) == 1.0
    d = nearest_distance(members[:3], torch.cat([members[:3] + 1.0, members[1:2]]))
    assert d[1] == 0 and abs(d[0].item() - 8.0) < 1e-6  # 64 pixels each off by 1 (float32)


def hanley_mcneil_sd(auc: float, n1: int, n2: int) -> float:
    """The AUC's standard error (Hanley and McNeil 1982, eq. 2)."""
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    return ((auc * (1 - auc) + (n1 - 1) * (q1 - auc**2) + (n2 - 1) * (q2 - auc**2)) / (n1 * n2)) ** 0.5


def test_a_partly_leaking_case_lands_in_its_binormal_range():
    """Members' distances N(0, 1), non-members' N(1, 1): the AUC is P(X < Y) =
    Phi(1 / sqrt 2) = 0.76025 (closed form), and a seeded draw of 1,000 + 1,000 lies within
    4 Hanley-McNeil standard errors (0.0104 each) of it."""
    g = torch.Generator().manual_seed(2)
    n = 1000
    d_in, d_out = torch.randn(n, generator=g), torch.randn(n, generator=g) + 1.0
    want = 0.5 * (1 + math.erf(1 / math.sqrt(2) / math.sqrt(2)))
    sd = hanley_mcneil_sd(want, n, n)
    assert abs(want - 0.76025) < 1e-5 and abs(sd - 0.0104) < 5e-4
    auc = membership_auc(d_in, d_out)
    assert abs(auc - want) < 4 * sd, auc


def test_white_box_distance_is_the_least_squares_residual():
    """A generator that memorised its members (their span) and one that did not (a random
    span): the optimised distances equal numpy's least-squares residuals."""
    g = torch.Generator().manual_seed(1)
    members, non_members = torch.randn(N, 1, 8, 8, generator=g), torch.randn(N, 1, 8, 8, generator=g)
    kw = dict(candidates=200, restarts=2, steps=300, lr=0.05, seed=0)
    # memorised: the span of 20 members (the rest of the members are not in it)
    w_mem = members[:20].flatten(1)
    d_in = reconstruction_distance(LinearGenerator(w_mem), members[:20], **kw)
    d_out = reconstruction_distance(LinearGenerator(w_mem), non_members[:20], **kw)
    np.testing.assert_allclose(d_out.numpy(), span_residual(w_mem, non_members[:20]), rtol=1e-3)
    assert d_in.max() < 0.05 * d_out.min()  # members reconstructed (residual 0)
    assert membership_auc(d_in, d_out) == 1.0
    # not memorised: a random span of dimension 20, independent of both sets
    w = torch.randn(20, 64, generator=g)
    d_in = reconstruction_distance(LinearGenerator(w), members, **kw)
    d_out = reconstruction_distance(LinearGenerator(w), non_members, **kw)
    np.testing.assert_allclose(torch.cat([d_in, d_out]).numpy(),
                               span_residual(w, torch.cat([members, non_members])), rtol=1e-3)
    auc = membership_auc(d_in, d_out)
    assert abs(auc - pairwise_auc(d_in.numpy(), d_out.numpy())) < 1e-12
    assert NULL_RANGE[0] < auc < NULL_RANGE[1]


def test_frozen_generator_normalises_by_its_samples_statistics():
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    net.z_dim = 3
    frozen = frozen_for_queries(net, n=500, seed=3)
    z = torch.randn(500, 3, generator=torch.Generator().manual_seed(3))
    h = net[0](z).detach()
    bn = frozen[1]
    torch.testing.assert_close(bn.running_mean, h.mean(0))
    torch.testing.assert_close(bn.running_var, h.var(0, unbiased=True))
    assert not frozen.training and net[1].running_mean.abs().sum() == 0  # the original is untouched
    single = frozen(z[:1])
    torch.testing.assert_close(single, frozen(z[:7])[:1])  # a query does not depend on its batch


def test_reconstruction_scores_are_on_the_unit_scale():
    x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    mse, s, _ = reconstruction_scores(x, x)
    assert mse == 0 and abs(s - 1) < 1e-12
    mse, _, psnr = reconstruction_scores(torch.full_like(x, -1), torch.full_like(x, 1))
    assert mse == 1.0 and psnr == 0.0  # black against white
    # every pixel off by 0.1 on the [0, 1] scale (0.2 on [-1, 1]): 10 log10(1 / 0.01) = 20 dB
    y = torch.zeros(5, 1, 28, 28)
    _, _, psnr = reconstruction_scores(y, y + 0.2)
    assert abs(psnr - 20.0) < 1e-4


def test_fsha_gradient_penalty_of_a_linear_critic_is_its_weight_norm_gap():
    """For D(x) = w.x + b the gradient is w at every interpolate: the penalty is (||w|| - 1)^2."""
    from benchmarks.fsha import gradient_penalty
    g = torch.Generator().manual_seed(0)
    d = nn.Sequential(nn.Flatten(), nn.Linear(2 * 3 * 3, 1))
    real, fake = torch.randn(5, 2, 3, 3, generator=g), torch.randn(5, 2, 3, 3, generator=g)
    want = (d[1].weight.detach().norm().item() - 1) ** 2
    assert abs(gradient_penalty(d, real, fake).item() - want) < 1e-6
