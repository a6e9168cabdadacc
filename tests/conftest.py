"""Shared fixtures: seeding, an isolated profile cache, and dcgan model profiles.

``dcgan_profile`` is synthetic: the dcgan discriminator's real per-layer sizes at batch 64
(parameters, FLOPs, bytes; ``test_graph_models`` checks them against a measurement) with
fixed literal times, so planning tests never depend on how fast this machine is.
``measured_dcgan_profile`` is a real measurement, taken once per session with few repeats.
``profile_cache`` writes the synthetic profile where ``fsl plan`` looks for a cached
measurement, so the CLI (in-process or as a subprocess) plans on the same numbers.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

# One intra-op thread (unless set): the tests' tensors are small, and with more threads
# than free cores torch's thread pool spins; 20-60x slower under parallel load. Set before
# torch is imported, so `fsl` subprocesses (same profile cache key) inherit it too.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

from planner.jsonio import write_json  # noqa: E402
from planner.models import dcgan_discriminator  # noqa: E402
from planner.profile import BYTES_PER_PARAM_TRAINING, LayerProfile, ModelProfile, measure
from planner.profile_cache import cache_path

SEED = 0
BATCH = 64

# dcgan at batch 64: name, kind, params, forward flops, output shape (per sample),
# bytes autograd saves (2 x batch), step time in seconds (literal, not measured). The
# SPEC §2.1 costs are literal too: forward passes take a third of a layer's step, a
# stage's overhead 0.3 ms per micro-batch, codecs 1 ms (fp16) and 4 ms (int8) per MB
# of a layer's output, the generator's step 40 ms.
_DCGAN_LAYERS = (
    ("a_conv", "Conv2d", 1_664, 20_070_400, (64, 14, 14), 407_808, 0.034),
    ("a_lrelu", "LeakyReLU", 0, 802_816, (64, 14, 14), 6_422_528, 0.010),
    ("a_drop", "SeededDropout", 0, 3_211_264, (64, 14, 14), 1_605_632, 0.029),
    ("b_conv", "Conv2d", 204_928, 642_252_800, (128, 7, 7), 7_241_728, 0.056),
    ("b_lrelu", "LeakyReLU", 0, 401_408, (128, 7, 7), 3_211_264, 0.0004),
    ("b_drop", "SeededDropout", 0, 1_605_632, (128, 7, 7), 802_816, 0.006),
    ("c_conv", "Conv2d", 819_456, 838_860_800, (256, 4, 4), 6_488_064, 0.069),
    ("c_lrelu", "LeakyReLU", 0, 262_144, (256, 4, 4), 2_097_152, 0.0003),
    ("c_drop", "SeededDropout", 0, 1_048_576, (256, 4, 4), 524_288, 0.004),
    ("c_flatten", "Flatten", 0, 0, (4096,), 0, 0.0002),
    ("c_dense", "Linear", 4_097, 262_144, (1,), 2_113_536, 0.0003),
)


def synthetic_dcgan_profile() -> ModelProfile:
    layers, input_bytes = [], BATCH * 28 * 28 * 4
    for name, kind, params, flops, shape, saved, time_s in _DCGAN_LAYERS:
        output_bytes = BATCH * int(np.prod(shape)) * 4
        layers.append(LayerProfile(
            name=name, kind=kind, params=params, param_bytes=4 * params, flops=flops,
            output_shape=shape, output_bytes=output_bytes, saved_bytes=saved,
            memory_bytes=params * BYTES_PER_PARAM_TRAINING + saved + 2 * 2 * output_bytes,
            time_s=time_s, forward_s=time_s / 3, input_bytes=input_bytes,
            codec_s={"fp16": 1e-3 * output_bytes / 1e6, "int8": 4e-3 * output_bytes / 1e6}))
        input_bytes = output_bytes
    model = dcgan_discriminator()
    return ModelProfile(model="dcgan", fingerprint=model.fingerprint(), input_shape=model.input_shape,
                        batch_size=BATCH, layers=tuple(layers), host="synthetic",
                        torch_version=torch.__version__, threads=1, seconds=0.0,
                        overhead_s=3e-4, generator_step_s=0.04, fake_bytes=BATCH * 28 * 28 * 4)


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Every test starts from the same random state."""
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)


@pytest.fixture(scope="session", autouse=True)
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``FSL_CACHE_DIR`` for the whole session (and the ``fsl`` subprocesses it starts)."""
    path = tmp_path_factory.mktemp("fsl-cache")
    old = os.environ.get("FSL_CACHE_DIR")
    os.environ["FSL_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("FSL_CACHE_DIR", None)
    else:
        os.environ["FSL_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def dcgan_profile() -> ModelProfile:
    """dcgan at batch 64 with real sizes and fixed literal times."""
    return synthetic_dcgan_profile()


@pytest.fixture(scope="session")
def profile_cache(cache_dir: Path, dcgan_profile: ModelProfile) -> Path:
    """Put ``dcgan_profile`` in the cache, so ``fsl plan`` (batch 64) uses it and never measures."""
    path = cache_path(dcgan_discriminator(), BATCH)
    write_json(path, dcgan_profile.to_json())
    return path


@pytest.fixture(scope="session")
def measured_dcgan_profile() -> ModelProfile:
    """dcgan at batch 64 measured on this machine, once per session, with few repeats."""
    return measure(dcgan_discriminator(), batch_size=BATCH, repeats=1, warmup=1)
