"""Secure aggregation (trainer.secagg): masks cancel, the server's view of a client is
noise, the unmasked average is plain fedavg's, a dropped client skips the round."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import torch
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from tests.helpers import chain_plan, config, final_states, run
from trainer.backends.local import run_local
from trainer.build import RunSpec
from trainer.secagg import MOD, Masker, decode, encode, mask_stream, shared_key, unmask_average
from trainer.transport import InProcessTransport

CUTS = [[2], [5], [2, 6]]  # three clients cut differently: segments overlap in every pattern
WEIGHTS = [1.0, 2.0, 3.0]


def _public(k: X25519PrivateKey) -> bytes:
    return k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def test_pairwise_masks_cancel_over_the_clients():
    """Random layouts of 3 clients over P coordinates, each cut at random places: the sum
    of the masked encodings is the sum of the plain ones, exactly, while no single masked
    vector is its plain encoding."""
    rng = random.Random(0)
    P = 5000
    for trial in range(5):
        devices = []  # (client, a, b)
        for k in range(3):
            cuts = sorted(rng.sample(range(1, P), rng.randint(0, 3)))
            bounds = [0, *cuts, P]
            devices += [(k, a, b) for a, b in zip(bounds, bounds[1:])]
        keys = [X25519PrivateKey.generate() for _ in devices]
        weights = [rng.randint(1, 900) for _ in range(3)]
        x = [torch.randn(P) for _ in range(3)]
        masked = [torch.zeros(P, dtype=torch.int64) for _ in range(3)]
        for i, (k, a, b) in enumerate(devices):
            peers = tuple((1 if k < j else -1, pa, pb, shared_key(keys[i], _public(keys[n])))
                          for n, (j, pa, pb) in enumerate(devices) if j != k and max(a, pa) < min(b, pb))
            m = Masker(k, a, b, float(weights[k]), peers).mask(x[k][a:b], round_no=trial + 1)
            assert not torch.equal(m, encode(x[k][a:b], weights[k]))
            masked[k][a:b] = m
        total = unmask_average(dict(enumerate(masked)), dict(enumerate(map(float, weights))))
        want = sum(w * v for w, v in zip(weights, x)) / sum(weights)
        torch.testing.assert_close(total, want, atol=1e-6, rtol=0)


def test_mask_streams_slice_and_differ_by_round():
    key = bytes(range(32))
    whole = mask_stream(key, 3, 0, 1000)
    assert torch.equal(mask_stream(key, 3, 123, 777), whole[123:777])
    assert not torch.equal(mask_stream(key, 4, 0, 1000), whole)
    assert whole.min() >= 0 and whole.max() < MOD
    assert abs(whole.double().mean().item() / MOD - 0.5) < 0.05  # uniform over Z_{2^62}


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.corrcoef(torch.stack([a.double(), b.double()]))[0, 1].item()


def _weights_sent(tmp_path, plan, out: str, **kw) -> dict[str, torch.Tensor]:
    """Run one round of one step; returns what each device sent the server as its weights."""
    cfg = config(tmp_path, plan, out, rounds=1, steps_per_round=1, aggregate="fedavg", **kw)
    t = InProcessTransport()
    seen, send = {}, t.send

    def spy(src, dst, tensor, *, tag):
        if tag == "weights" and dst == "server":
            seen[src] = tensor.detach().clone()
        return send(src, dst, tensor, tag=tag)

    t.send = spy
    run_local(RunSpec(cfg, plan), transport=t)
    return seen


def test_secure_fedavg_is_fedavg_and_the_server_sees_noise(tmp_path):
    """One round of fedavg with and without --secure-agg from the same start: the same
    discriminators after (to 1e-5); and what the server received from each device, read
    as the fixed point it encodes, is uncorrelated with the weights the device holds
    (which the plain run sent as they are: training before the exchange is the same)."""
    plan = chain_plan("dcgan", CUTS, weights=WEIGHTS)
    plain_sent = _weights_sent(tmp_path, plan, "plain")
    secure_sent = _weights_sent(tmp_path, plan, "secure", secure_agg=True)
    _, plain = final_states(tmp_path / "plain", plan)
    _, secure = final_states(tmp_path / "secure", plan)
    for c in plain:
        for k, v in plain[c].items():
            torch.testing.assert_close(secure[c][k], v, atol=1e-5, rtol=0, msg=f"{c} {k}")
    rows = json.loads((tmp_path / "secure" / "processes.json").read_text())["processes"]
    samples = {r["role"]: r["training_samples"] for r in rows}
    for k, c in enumerate(plan.planned):
        n = float(samples[c.stages[0].device])
        for st in c.stages:
            w, view = plain_sent[st.device], secure_sent[st.device]
            if not w.numel():
                continue  # a stage without parameters sends nothing
            assert view.dtype == torch.int64 and view.numel() == w.numel()
            # masks come from fresh keys: |corr| of independent vectors is ~1/sqrt(n); 5 sigma
            bound = 5 / w.numel() ** 0.5
            assert abs(_corr(decode(view, n), w)) < bound, f"{st.device}'s masked segment still carries its weights"
            assert _corr(decode(encode(w, n), n), w) > 0.999  # without masks the same reading recovers them


def test_a_dropped_client_skips_the_rounds_aggregation(tmp_path):
    """A client slower than the deadline is dropped in its first step: secure aggregation
    skips the round with a message, and every client keeps its own discriminator (an
    average would have made them all equal)."""
    plan = chain_plan("dcgan", [[5], [5]], weights=[1.0, 1.0])
    fast, slow = plan.clients
    plan = replace(plan, clients=(fast, replace(slow, processing_time_factor={d: 200.0 for d in
                                                                              slow.processing_time_factor})))
    (m,) = run(tmp_path, plan, rounds=1, steps_per_round=2, emulate="sleep", deadline_s=0.5, timeout_s=20.0,
               aggregate="fedavg", secure_agg=True)
    assert m["clients"]["client1"]["dropped_at_step"] == 0
    assert "skipped" in m["aggregation_skipped"] and "client1" in m["aggregation_skipped"]
    _, discs = final_states(tmp_path / "run", plan)
    key = "layers.0.weight"
    assert (discs["client0"][key] - discs["client1"][key]).abs().max() > 1e-4
