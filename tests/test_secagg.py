"""Secure aggregation (trainer.aggregate.secagg, secagg_round, secagg_shares) against independent
references: every coordinate the server receives differs from its plain fixed-point
value (computed here with numpy) and no device's masked vector correlates with its plain
one (Pearson's r within 5 / sqrt(n) of 0), while the sum is exact; the averages devices receive
equal numpy's fedavg of the plain weights, over all clients when one was dropped after
sending and over the survivors when one never sent; Shamir sharing against hand-worked
polynomials over GF(97)."""

from __future__ import annotations

import json
import random
import threading
from dataclasses import replace

import numpy as np
import pytest
import torch
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from tests.helpers import chain_plan, config
from trainer.aggregate.combine import device_exchange, server_combine
from trainer.backends.local import run_local
from trainer.run.loop import run_role
from trainer.roles.build import RunSpec
from trainer.aggregate.secagg import (MISSING, MOD, Layout, Masker, encode, join, mask_stream, public_bytes, shared_key,
                            unmask_average)
from trainer.aggregate import secagg_round
from trainer.aggregate.secagg_round import serve_keys
from trainer.aggregate.secagg_shares import PRIME, int_to_key, key_to_int, reconstruct, seal, split, threshold, unseal
from trainer.comm.transport import InProcessTransport, LinkTable

CUTS = [[2], [5], [2, 6]]  # three clients cut differently: segments overlap in every pattern
WEIGHTS = [1.0, 2.0, 3.0]
ROUND_TIMEOUT_S = 5.0  # --timeout-s of the protocol-level rounds, server and devices alike (2 cores, loaded)


def _fixed_point(w: np.ndarray, n: float) -> np.ndarray:
    """round(n x 2^24 x w) mod 2^62, by numpy, as uint64."""
    return np.mod(np.round(w.astype(np.float64) * (n * 2.0**24)).astype(np.int64), 1 << 62).astype(np.uint64)


def _correlation(masked: np.ndarray, plain: np.ndarray) -> float:
    """Pearson's r between a masked vector (its values as numbers in [0, 2^62)) and its plain
    weights: about 0 (|r| < 5 / sqrt(n) but with probability 6e-7) when the mask is uniform."""
    return float(np.corrcoef(masked.astype(np.float64), plain.astype(np.float64))[0, 1])


def _fedavg(plain: dict[int, np.ndarray], n: dict[int, float]) -> np.ndarray:
    return sum(n[k] * plain[k].astype(np.float64) for k in plain) / sum(n[k] for k in plain)


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
            peers = tuple((1 if k < j else -1, pa, pb, shared_key(keys[i], public_bytes(keys[n])))
                          for n, (j, pa, pb) in enumerate(devices) if j != k and max(a, pa) < min(b, pb))
            m = Masker(k, a, b, float(weights[k]), peers).mask(x[k][a:b], round_no=trial + 1)
            plain = _fixed_point(x[k][a:b].numpy(), weights[k])
            assert not (m.numpy().astype(np.uint64) == plain).any(), "a coordinate left unmasked"
            if b - a >= 100:
                assert abs(_correlation(m.numpy(), x[k][a:b].numpy())) < 5 / (b - a) ** 0.5
            masked[k][a:b] = m
        total = unmask_average(dict(enumerate(masked)), dict(enumerate(map(float, weights))))
        want = sum(w * v for w, v in zip(weights, x)) / sum(weights)
        torch.testing.assert_close(total, want, atol=1e-6, rtol=0)


def test_a_coordinate_without_a_peer_is_never_sent():
    """A device whose keyed peers cover only [0, 5) of its [0, 10) refuses to mask."""
    with pytest.raises(ValueError, match=r"5 of the coordinates \[0, 10\) have no other client's device"):
        Masker(0, 0, 10, 1.0, ((1, 0, 5, bytes(32)),)).mask(torch.ones(10), round_no=1)
    assert Masker(0, 0, 10, 1.0, ((1, 0, 5, bytes(32)), (-1, 5, 10, bytes(32)))).mask(torch.ones(10), 1).numel() == 10


def test_mask_streams_slice_and_differ_by_round():
    key = bytes(range(32))
    whole = mask_stream(key, 3, 0, 1000)
    assert torch.equal(mask_stream(key, 3, 123, 777), whole[123:777])
    assert not torch.equal(mask_stream(key, 4, 0, 1000), whole)
    assert whole.min() >= 0 and whole.max() < MOD
    assert abs(whole.double().mean().item() / MOD - 0.5) < 0.05  # uniform over Z_{2^62}


def test_the_overflow_bound_is_on_the_sum_of_all_clients():
    """|w| = 2^20 with 10 samples fits one client's vector (10 x 2^44 < 2^61), but 2^20 x
    200,000 samples of all clients x 2^24 = 3.518e18 (2^61.6) would not fit their sum:
    refused, with the numbers. The bound is (2^61 - 2^20) / (200,000 x 2^24) = 687,194.77
    (hand-computed): 687,194.7 passes, 687,194.8 does not."""
    w = torch.tensor([2.0**20, -1.0], dtype=torch.float64)
    assert encode(w, 10.0)[0].item() == 10 * 2**44
    with pytest.raises(ValueError, match=r"1\.04858e\+06 x 200000 samples of all clients x 2\^24 = 3\.518e\+18 "
                                         r".*below 6\.872e\+05"):
        encode(w, 10.0, 200_000.0)
    encode(torch.tensor([687_194.7], dtype=torch.float64), 10.0, 200_000.0)
    with pytest.raises(ValueError):
        encode(torch.tensor([-687_194.8], dtype=torch.float64), 10.0, 200_000.0)


def test_shamir_against_hand_worked_polynomials():
    """Over GF(97): f(x) = 42 + 5x gives 47, 52, 57 at x = 1, 2, 3 and any two give 42
    back; f(x) = 90 + 50x gives 43, 93, 46 (140, 190, 240 mod 97), and (2, 93), (3, 46)
    interpolate to 279 - 92 = 187 = 90 mod 97; f(x) = 7 + 3x + 2x^2 needs all three of
    12, 21, 34."""
    coefficients = iter([5, 50, 3, 2])
    draw = lambda p: next(coefficients)  # noqa: E731 - the hand-worked coefficients, in order
    assert split(42, [1, 2, 3], 2, prime=97, draw=draw) == {1: 47, 2: 52, 3: 57}
    assert split(90, [1, 2, 3], 2, prime=97, draw=draw) == {1: 43, 2: 93, 3: 46}
    assert split(7, [1, 2, 3], 3, prime=97, draw=draw) == {1: 12, 2: 21, 3: 34}
    for pair in ({1: 47, 2: 52}, {1: 47, 3: 57}, {2: 52, 3: 57}):
        assert reconstruct(pair, prime=97) == 42
    assert reconstruct({2: 93, 3: 46}, prime=97) == 90
    assert reconstruct({1: 12, 2: 21, 3: 34}, prime=97) == 7
    assert reconstruct({1: 12, 2: 21}, prime=97) == (12 - (21 - 12)) % 97  # the line through two: not 7


def test_a_mask_key_comes_back_from_threshold_shares_only():
    key = X25519PrivateKey.generate()
    shares = split(key_to_int(key), [1, 2, 4, 5], threshold(5))  # 4 holders of 5 clients; t = 3
    assert threshold(5) == 3 and threshold(2) == threshold(3) == 2
    for held in ({1: shares[1], 2: shares[2], 5: shares[5]}, shares):
        assert public_bytes(int_to_key(reconstruct(held))) == public_bytes(key)
    assert reconstruct({1: shares[1], 4: shares[4]}) != key_to_int(key) and max(shares.values()) < PRIME


def test_a_sealed_share_opens_for_its_holder_only():
    owner, holder, other = (X25519PrivateKey.generate() for _ in range(3))
    sealed = seal(12345, box=owner, holder_box=public_bytes(holder), owner=0, holder=3)
    assert unseal(sealed, box=holder, owner_box=public_bytes(owner), owner=0, holder=3) == 12345
    assert (12345).to_bytes(66, "little") not in sealed
    for box, o, h in ((other, 0, 3), (holder, 1, 3), (holder, 0, 2)):
        with pytest.raises(InvalidTag):
            unseal(sealed, box=box, owner_box=public_bytes(owner), owner=o, holder=h)


def _spied(tmp_path, plan, out: str, monkeypatch, **kw):
    """Run one round of fedavg with --secure-agg; returns (the plain segment each device
    masked, what each sent the server, what the server answered it, training samples)."""
    cfg = config(tmp_path, plan, out, rounds=1, aggregate="fedavg", secure_agg=True, **({"steps_per_round": 1} | kw))
    t = InProcessTransport(LinkTable.from_plan(plan), emulate=cfg.emulate == "sleep")
    plain, sent, answered, send, masker_send = {}, {}, {}, t.send, Masker.send

    def spy(src, dst, tensor, *, tag):
        if tag == "weights":
            (sent if dst == "server" else answered)[src if dst == "server" else dst] = tensor.detach().clone()
        return send(src, dst, tensor, tag=tag)

    def spy_masker(self, me, t, flat, **kw):
        plain[me] = flat.detach().clone()
        return masker_send(self, me, t, flat, **kw)

    t.send = spy
    monkeypatch.setattr(Masker, "send", spy_masker)
    history = run_local(RunSpec(cfg, plan), run_role, transport=t)
    rows = json.loads((tmp_path / out / "processes.json").read_text())["processes"]
    samples = {r["client"]: float(r["training_samples"]) for r in rows if r["training_samples"]}
    return history, plain, sent, answered, samples


def _per_client(plan, parts: dict[str, torch.Tensor]) -> dict[int, np.ndarray]:
    return {k: torch.cat([parts[s.device] for s in c.stages]).numpy() for k, c in enumerate(plan.planned)}


@pytest.mark.slow
def test_the_server_sees_no_plain_coordinate_and_the_exact_sum(tmp_path, monkeypatch):
    """One round of secure fedavg, 3 clients cut differently: no coordinate any device sent
    equals the plain weight's fixed point (numpy's; a uniform mod-2^62 value hits it by
    chance with probability 2^-62 per coordinate); the sum the server decodes, once the
    self masks are off, is the sum of the plain fixed points, exactly; every device gets
    numpy's fedavg back."""
    plan = chain_plan("dcgan", CUTS, weights=WEIGHTS)
    decoded, decode = [], secagg_round.decode
    monkeypatch.setattr(secagg_round, "decode", lambda total, w: decoded.append(total.clone()) or decode(total, w))
    _, plain, sent, answered, samples = _spied(tmp_path, plan, "run", monkeypatch)
    n = {k: samples[c.name] for k, c in enumerate(plan.planned)}
    checked = 0
    for k, c in enumerate(plan.planned):
        for st in c.stages:
            w, view = plain[st.device].numpy(), sent[st.device]
            assert view.dtype == torch.int64 and view.shape == w.shape
            same = int((view.numpy().astype(np.uint64) == _fixed_point(w, n[k])).sum())
            assert same == 0, f"{st.device}: {same} of {w.size} coordinates reach the server unmasked"
            r = _correlation(view.numpy(), w)
            assert abs(r) < 5 / w.size ** 0.5, f"{st.device}: what it sent correlates with its weights (r = {r:.4f})"
            checked += w.size
    assert checked == len(plan.planned) * Layout.of(RunSpec(config(tmp_path, plan, "run"), plan)).size
    want = sum(_fixed_point(w, n[k]) for k, w in _per_client(plan, plain).items()) & np.uint64((1 << 62) - 1)
    (total,) = decoded
    assert np.array_equal(total.numpy().astype(np.uint64), want)  # uint64 wraps mod 2^64, a multiple of 2^62
    for k, got in _per_client(plan, answered).items():
        np.testing.assert_allclose(got, _fedavg(_per_client(plan, plain), n), atol=1e-6, rtol=0)


@pytest.mark.slow
def test_a_client_dropped_after_sending_is_averaged_in(tmp_path, monkeypatch):
    """A client slower than the deadline is dropped in its first step, then sends its
    masked weights after the steps: the round aggregates (no ``aggregation_skipped``) and
    every device gets numpy's fedavg over both clients' plain weights."""
    plan = chain_plan("dcgan", [[5], [5]], weights=[1.0, 1.0])
    fast, slow = plan.clients
    plan = replace(plan, clients=(fast, replace(slow, processing_time_factor={d: 200.0 for d in
                                                                              slow.processing_time_factor})))
    (m,), plain, _, answered, samples = _spied(tmp_path, plan, "run", monkeypatch, steps_per_round=2,
                                               emulate="sleep", deadline_s=0.5, timeout_s=20.0)
    assert m["clients"]["client1"]["dropped_at_step"] == 0
    assert "aggregation_skipped" not in m
    n = {k: samples[c.name] for k, c in enumerate(plan.planned)}
    want = _fedavg(_per_client(plan, plain), n)
    assert np.abs(_per_client(plan, plain)[0] - _per_client(plan, plain)[1]).max() > 1e-4  # averaging matters
    for got in _per_client(plan, answered).values():
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


def _protocol(tmp_path, cuts: list[list[int]], server, missing: set[str] = frozenset()):
    """Key setup and one aggregation over the in-process transport, without training: each
    device holds random plain weights; the ``missing`` devices take part in the key setup,
    then fail before sending; ``server(spec, t, n, out)`` plays the server. Server and
    devices wait as long (``--timeout-s``), as in a run: the server's wait for the missing
    ones must not outlast the survivors'. Returns (plain, after, out, layout, n by client index)."""
    plan = chain_plan("dcgan", cuts, weights=[1.0 + k for k in range(len(cuts))])
    spec = RunSpec(config(tmp_path, plan), plan)
    lay = Layout.of(spec)
    n = {c.name: 100 + 37 * k for k, c in enumerate(plan.planned)}
    gen = torch.Generator().manual_seed(0)
    stages = {d: torch.nn.ParameterList([torch.nn.Parameter(torch.randn(b - a, generator=gen))])
              for d, (_, a, b) in lay.ranges.items()}
    plain = {d: s[0].detach().clone() for d, s in stages.items()}
    t = InProcessTransport()
    for role in ["server", *lay.devices]:
        t.begin_round(role, 1)
    out, errors = {}, []

    def device(d):
        ring = join(spec, d, t, timeout_s=10.0)
        first = {key for *_, key in ring.masker.peers}
        if d not in missing:
            device_exchange(d, stages[d], t, timeout_s=ROUND_TIMEOUT_S, masker=ring, round_no=1)
            out[d] = (first, {key for *_, key in ring.masker.peers})

    threads = [threading.Thread(target=lambda f=f, a=a: _catch(errors, f, *a))
               for f, a in [(server, (spec, t, n, out))] + [(device, (d,)) for d in lay.devices]]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors, errors
    after = {d: s[0].detach().clone() for d, s in stages.items()}
    return plain, after, out, lay, {k: float(n[c.name]) for k, c in enumerate(plan.planned)}


def _honest_server(spec, t, n, out):
    ring = serve_keys(spec, t, n, timeout_s=10.0)
    out["why"] = server_combine("fedavg", {}, {}, t, timeout_s=ROUND_TIMEOUT_S, secure=ring)
    out["next round"] = ring.keys.present()


def _round_with_missing(tmp_path, cuts: list[list[int]], missing: set[str]):
    """:func:`_protocol` with the server of ``fsl train``; checks that the next round is
    keyed afresh with the devices that delivered. Returns (plain, after, the server's
    skip reason, layout, n by client index)."""
    plain, after, out, lay, n = _protocol(tmp_path, cuts, _honest_server, missing)
    assert out["next round"] == [d for d in lay.devices if d not in missing]
    for d in out["next round"]:
        first, second = out[d]
        assert first and not first & second, f"{d}: the next round's pairwise keys are not fresh"
    return plain, after, out["why"], lay, n


@pytest.mark.slow
def test_a_server_that_calls_a_delivered_device_missing_still_sees_noise(tmp_path):
    """A server that deviates: every segment arrives, yet it asks the data devices for
    c0-d0's mask key as if c0-d0 were missing. It gets the key (checked against the public
    one) and strips c0-d0's pairwise masks (computed here); the self mask, whose shares it
    cannot get in the same round, still hides every coordinate."""
    target = "c0-d0"

    def server(spec, t, n, out):
        ring = serve_keys(spec, t, n, timeout_s=10.0)
        lay, keys = ring.keys.layout, ring.keys
        got = {d: t.recv("server", d, tag="weights", timeout_s=10.0) for d in lay.devices}
        status = torch.zeros(len(lay.devices), dtype=torch.int64)
        status[lay.devices.index(target)] = MISSING
        for h in lay.heads:
            t.send("server", h, status, tag="secagg")
        points = {lay.client(h) + 1: int.from_bytes(t.recv("server", h, tag="secagg", timeout_s=10.0)
                                                    [lay.devices.index(target)].numpy().tobytes(), "little")
                  for h in lay.heads}
        private = int_to_key(reconstruct(points))
        assert public_bytes(private) == keys.mask_publics[lay.devices.index(target)]
        k, a, b = lay.ranges[target]
        y = got[target].clone()
        for v, (kv, va, vb) in lay.ranges.items():
            lo, hi = max(a, va), min(b, vb)
            if kv != k and lo < hi:
                m = mask_stream(shared_key(private, keys.mask_publics[lay.devices.index(v)]), 1, lo, hi)
                y[lo - a:hi - a] = torch.remainder(y[lo - a:hi - a] + (-m if k < kv else m), MOD)
        out["stripped"] = y
        for d in lay.devices:
            t.send("server", d, torch.zeros(0), tag="weights")
        ring.setup(t, list(lay.devices), set())

    plain, _, out, lay, n = _protocol(tmp_path, CUTS, server)
    same = out["stripped"].numpy().astype(np.uint64) == _fixed_point(plain[target].numpy(), n[0])
    assert not same.any(), f"{int(same.sum())} coordinates of {target} unmasked by its key alone"


def _catch(errors, f, *args):
    try:
        f(*args)
    except Exception as e:  # noqa: BLE001 - reported by the test
        errors.append(e)


def _reference(plain, lay: Layout, n: dict[int, float], missing: set[str]) -> np.ndarray:
    """numpy: each coordinate's fedavg over the clients whose device holding it delivered."""
    num, den = np.zeros(lay.size), np.zeros(lay.size)
    for d, (k, a, b) in lay.ranges.items():
        if d not in missing:
            num[a:b] += n[k] * plain[d].numpy().astype(np.float64)
            den[a:b] += n[k]
    return num / den


@pytest.mark.slow
@pytest.mark.parametrize("missing", [{"c1-d0", "c1-d1"}, {"c2-d1"}], ids=["a whole client", "one device"])
def test_a_client_that_never_sent_has_its_masks_removed(tmp_path, missing):
    """Devices fail between the key setup and sending their weights. Client 1 (both its
    devices): the survivors get numpy's fedavg over clients 0 and 2. Client 2's middle
    device: its coordinates are averaged over clients 0 and 1, the rest over all three.
    The missing devices keep their weights."""
    plain, after, why, lay, n = _round_with_missing(tmp_path, CUTS, missing)
    assert why is None
    want = _reference(plain, lay, n, missing)
    if missing == {"c1-d0", "c1-d1"}:
        whole = {k: np.concatenate([plain[d].numpy() for d in lay.devices if lay.client(d) == k]).astype(np.float64)
                 for k in (0, 2)}
        np.testing.assert_allclose(want, (n[0] * whole[0] + n[2] * whole[2]) / (n[0] + n[2]), rtol=1e-12)
    for d, (_, a, b) in lay.ranges.items():
        if d in missing:
            assert torch.equal(after[d], plain[d])
        else:
            np.testing.assert_allclose(after[d].numpy(), want[a:b], atol=1e-6, rtol=0, err_msg=d)


@pytest.mark.slow
def test_too_few_shares_or_one_client_left_skip_the_round(tmp_path):
    """4 clients (t = 3): two missing leave 2 holders of each missing key's shares, fewer
    than 3: skipped, everyone keeps its weights. 3 clients with two missing: one client
    left, whose average would be its own weights: skipped."""
    for cuts, missing, reason in (([[2], [], [5], []], {"c1-d0", "c3-d0"}, "2 of the 3 shares"),
                                  ([[2], [], []], {"c1-d0", "c2-d0"}, "from 1 client")):
        (tmp_path / str(len(cuts))).mkdir()
        plain, after, why, lay, _ = _round_with_missing(tmp_path / str(len(cuts)), cuts, missing)
        assert reason in why and "skipped" in why, why
        for d in lay.devices:
            assert torch.equal(after[d], plain[d])
