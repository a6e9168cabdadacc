"""Big seeded device profiles (``fsl-devices/1``) for the planner-at-scale benchmark.

A fleet of ``n_clients`` households, clinics and workshops of ``devices`` devices each,
drawn from a catalogue of device kinds (phone, watch, tablet, laptop, desktop,
single-board computer, TV box, router). Two sorts of client:

- **kits** (``identical`` of the clients): copies of one of ``kits`` standard setups
  (a chain's identical clinics, a vendor's bundle). Same hardware, same links; only the
  names differ, so their cost tables are identical and the planner may solve them once.
- **distinct** clients (the rest): every device drawn on its own, its factor on a
  continuous range (two decimals), its capacity, bandwidth and latency from its kind's
  lists; with 8 devices two such clients coincide with negligible probability, so
  deduplication cannot carry the result (the benchmark reports the distinct problems).

A file-level budget leaves some slow clients out, and a few clients whose devices are
all small are left out for capacity: the plan has exclusions, as a real fleet's would.

    python benchmarks/fleet_profiles.py N [--devices 8] [--seed 0] [--out fleet.json]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

# kind: (factor range, capacities, bandwidths Mbit/s, latencies ms)
KINDS: dict[str, tuple[tuple[float, float], tuple[str, ...], tuple[int, ...], tuple[int, ...]]] = {
    "phone": ((2.0, 6.0), ("128MB", "256MB", "512MB", "1GB"), (50, 100, 200, 300), (5, 10, 20)),
    "watch": ((8.0, 20.0), ("16MB", "32MB", "64MB"), (5, 10, 20, 40), (10, 20, 40)),
    "tablet": ((1.5, 5.0), ("256MB", "512MB", "1GB"), (100, 200, 300), (5, 10)),
    "laptop": ((0.8, 2.0), ("1GB", "2GB", "4GB"), (200, 400, 1000), (1, 2, 5)),
    "desktop": ((0.5, 1.2), ("2GB", "4GB", "8GB"), (500, 1000), (1, 2)),
    "sbc": ((5.0, 15.0), ("128MB", "256MB", "512MB"), (50, 100), (2, 5, 10)),
    "tvbox": ((3.0, 10.0), ("128MB", "256MB"), (100, 200), (5, 10)),
    "router": ((10.0, 30.0), ("32MB", "64MB"), (100, 1000), (1, 2)),
}
DATA_KINDS = {"phone": 5, "tablet": 2, "sbc": 2, "watch": 1}  # where a client's data is collected (weights)
HELPER_WEIGHTS = {"phone": 3, "watch": 2, "tablet": 2, "laptop": 2, "desktop": 1, "sbc": 2, "tvbox": 1, "router": 1}
SMALL_KINDS = ("watch", "router")  # a client of only these cannot hold the model
SMALL_SHARE = 0.01  # share of distinct clients whose every device is small
BUDGET_S = 12.0  # the file's budget: the slowest clients are excluded


def _device(rng: random.Random, kind: str, name: str, holds_data: bool) -> dict:
    (lo, hi), caps, bws, lats = KINDS[kind]
    out = {"name": name, "processing_time_factor": round(rng.uniform(lo, hi), 2), "capacity": rng.choice(caps),
           "bandwidth_mbps": rng.choice(bws), "latency_ms": rng.choice(lats)}
    if holds_data:
        out["holds_data"] = True
    return out


def _draw_client(rng: random.Random, n_devices: int, *, small: bool = False) -> list[tuple[str, dict]]:
    """``(kind, device without its name)`` for each device; the first holds the data."""
    helpers = list(SMALL_KINDS) if small else list(HELPER_WEIGHTS)
    weights = [1] * len(helpers) if small else list(HELPER_WEIGHTS.values())
    kinds = [rng.choice(SMALL_KINDS) if small else rng.choices(list(DATA_KINDS), list(DATA_KINDS.values()))[0]] + rng.choices(helpers, weights, k=n_devices - 1)
    return [(k, _device(rng, k, "", i == 0)) for i, k in enumerate(kinds)]


def fleet(n_clients: int, *, devices: int = 8, seed: int = 0, identical: float = 0.1, kits: int = 20,
          budget_s: float | None = BUDGET_S) -> dict:
    """A profile of ``n_clients`` clients of ``devices`` devices (see the module docstring);
    ``identical``: the share of clients that copy one of ``kits`` standard setups."""
    rng = random.Random(seed)
    templates = [_draw_client(rng, devices) for _ in range(kits)]
    clients = []
    for c in range(n_clients):
        if rng.random() < identical:
            drawn = templates[rng.randrange(kits)]
        else:
            drawn = _draw_client(rng, devices, small=rng.random() < SMALL_SHARE)
        devs = [{**d, "name": f"c{c}-{i}-{kind}"} for i, (kind, d) in enumerate(drawn)]
        clients.append({"name": f"client-{c}", "data_weight": 1.0, "devices": devs})
    out: dict = {"schema": "fsl-devices/1", "clients": clients}
    if budget_s is not None:
        out["budget"] = {"step_time_s": budget_s}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("clients", type=int)
    ap.add_argument("--devices", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--identical", type=float, default=0.1, help="share of clients copying a standard kit")
    ap.add_argument("--out", type=Path, default=Path("fleet.json"))
    a = ap.parse_args()
    a.out.write_text(json.dumps(fleet(a.clients, devices=a.devices, seed=a.seed, identical=a.identical)) + "\n")
    print(f"wrote {a.out}: {a.clients} clients x {a.devices} devices (seed {a.seed})")


if __name__ == "__main__":
    main()
