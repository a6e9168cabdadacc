"""The discriminators, their layer graphs and their per-layer profiles.

The seed's parameter counts are literal; the split model is compared with the unsplit
one at every legal cut; the profile's FLOPs, parameters and bytes are checked on small
batches, and dcgan's against the synthetic profile the planning tests use.
"""

from __future__ import annotations

import pytest
import torch

from planner.graph import build_graph, legal_cuts
from planner.models import DISCRIMINATORS, SEED_PARTS, dcgan_discriminator, resnet_discriminator
from planner.profile import measure

MODELS = sorted(DISCRIMINATORS)


def _params(model, start: int, end: int) -> int:
    return sum(p.numel() for layer in model.layers[start:end] for p in layer.parameters())


def test_dcgan_has_the_seed_parts():
    """FSL-GAN's parts A/B/C: 1,664 / 204,928 / 823,553 parameters, layers 0..2, 3..5, 6..10."""
    model = dcgan_discriminator()
    assert len(model) == 11 and SEED_PARTS["dcgan"] == (0, 3, 6)
    assert [_params(model, 0, 3), _params(model, 3, 6), _params(model, 6, 11)] == [1_664, 204_928, 823_553]


@pytest.mark.parametrize("name", ["dcgan", "dcgan64"])
def test_every_edge_of_a_chain_is_a_legal_cut(name: str):
    model = DISCRIMINATORS[name]()
    assert legal_cuts(build_graph(model)) == list(range(len(model) - 1))


def test_resnet_cuts_only_between_blocks():
    model = resnet_discriminator()
    names = model.layer_names
    cuts = {names[i] for i in legal_cuts(build_graph(model))}
    inside = {f"res{k}_{x}" for k in (1, 2, 3) for x in ("conv1", "lrelu1", "conv2")}  # the skip crosses
    assert cuts == set(names[:-1]) - inside
    for between in ("stem_lrelu", "res1_lrelu2", "down1_lrelu", "res2_lrelu2", "down2_lrelu", "res3_lrelu2"):
        assert between in cuts


@pytest.mark.parametrize("name", MODELS)
def test_split_model_equals_unsplit(name: str):
    model = DISCRIMINATORS[name]().eval()
    x = torch.rand(3, *model.input_shape) * 2 - 1
    with torch.no_grad():
        whole = model(x)
        cuts = legal_cuts(build_graph(model))
        for cut in cuts:  # two segments, through run() and through Segment modules
            head = model.run(x, 0, cut + 1)
            torch.testing.assert_close(model.run(head, cut + 1), whole, rtol=0, atol=1e-6)
            tail = model.segment(cut + 1, len(model))(model.segment(0, cut + 1)(x))
            torch.testing.assert_close(tail, whole, rtol=0, atol=1e-6)
        h = x  # every legal cut at once
        for start, end in zip([0] + [c + 1 for c in cuts], [c + 1 for c in cuts] + [len(model)]):
            h = model.run(h, start, end)
        torch.testing.assert_close(h, whole, rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def small_profiles() -> dict:
    """Every model profiled at batch 2, one timing repeat: sizes and FLOPs, not times."""
    return {name: measure(DISCRIMINATORS[name](), batch_size=2, repeats=1, warmup=0) for name in MODELS}


@pytest.mark.parametrize("name", MODELS)
def test_profile_counts_flops_with_no_uncounted_ops(name: str, small_profiles):
    prof = small_profiles[name]
    model = DISCRIMINATORS[name]()
    assert [lp.name for lp in prof.layers] == model.layer_names
    assert [lp.uncounted_ops for lp in prof.layers] == [()] * len(model)
    for lp, layer in zip(prof.layers, model.layers):
        assert lp.params == sum(p.numel() for p in layer.parameters())
        if lp.kind in ("Conv2d", "Linear", "LeakyReLU", "Add"):
            assert lp.flops > 0, lp
        if lp.kind == "Conv2d":
            assert lp.saved_bytes > 0, lp
        assert lp.memory_bytes >= 16 * lp.params + 4 * lp.output_bytes


def test_conv_flops_are_multiply_adds(small_profiles):
    """fvcore counts one fused multiply-add as one flop: a_conv at batch 2 is
    2 x 64 x 14 x 14 outputs x 5 x 5 x 1 weights."""
    a_conv = small_profiles["dcgan"].layers[0]
    assert a_conv.flops == 2 * 64 * 14 * 14 * 5 * 5 * 1
    assert a_conv.output_bytes == 2 * 64 * 14 * 14 * 4


def test_synthetic_profile_matches_a_measurement(dcgan_profile, measured_dcgan_profile):
    """The planning tests' literal profile has dcgan's real sizes at batch 64."""
    def sizes(prof):
        return [(lp.name, lp.kind, lp.params, lp.param_bytes, lp.flops, lp.output_shape, lp.output_bytes,
                 lp.saved_bytes, lp.memory_bytes, lp.uncounted_ops) for lp in prof.layers]

    assert sizes(dcgan_profile) == sizes(measured_dcgan_profile)
    assert dcgan_profile.fingerprint == measured_dcgan_profile.fingerprint
    assert all(lp.time_s > 0 for lp in measured_dcgan_profile.layers)
