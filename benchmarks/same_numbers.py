"""Does the current code train the same numbers as an older commit? Answers whether a
benchmark measured at that commit still describes what the code computes (its losses,
weights and FID; not its times).

    python benchmarks/same_numbers.py --against 6ef3927 [--devices profiles/lab.json]
                                      [--rounds 2] [--steps 3]

The older commit is unpacked with ``git archive`` into a scratch folder; its own ``fsl
plan`` plans the profile (budgets removed, so that a loaded machine's slow profile still
plans every client) and both checkouts train that one plan with ``--emulate none`` and FID
at the last round, each in its own process. Printed: per round, the largest difference in
generator loss, discriminator loss, FID and KID, and whether every device sent the same
bytes. Nothing is written outside the scratch folder.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def checkout(commit: str, into: Path) -> Path:
    tar = subprocess.run(["git", "archive", commit], cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(tar)) as t:
        t.extractall(into, filter="data")
    return into


def fsl(code: Path, *args: str, cache: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(code), "FSL_CACHE_DIR": str(cache)}
    done = subprocess.run([sys.executable, "-m", "cli", *args], cwd=code, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"fsl {' '.join(args)} in {code} failed ({done.returncode}): {done.stderr.strip()[-800:]}")


def without_budgets(profile: Path, out: Path) -> Path:
    doc = json.loads(profile.read_text())
    doc.pop("budget", None)
    for c in doc["clients"]:
        c.pop("budget", None)
    out.write_text(json.dumps(doc))
    return out


def differences(old: list[dict], new: list[dict]) -> list[list]:
    rows = []
    for o, n in zip(old, new, strict=True):
        d_loss = max(abs(o["d_loss"][k] - n["d_loss"][k]) for k in o["d_loss"])
        quality = [abs(o[k] - n[k]) if o.get(k) is not None else "-" for k in ("fid", "kid")]
        same_bytes = ({k: v["bytes_sent"] for k, v in o["devices"].items()}
                      == {k: v["bytes_sent"] for k, v in n["devices"].items()})
        rows.append([o["round"], abs(o["g_loss"] - n["g_loss"]), d_loss, *quality, same_bytes])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--against", required=True, metavar="COMMIT")
    ap.add_argument("--devices", default="profiles/lab.json")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        old = checkout(args.against, tmp / "old")
        profile = without_budgets(ROOT / args.devices, tmp / "profile.json")
        fsl(old, "plan", "--devices", str(profile), "--out", str(tmp / "plan.json"), cache=tmp / "cache")
        train = ["train", "--plan", str(tmp / "plan.json"), "--rounds", str(args.rounds), "--steps-per-round",
                 str(args.steps), "--emulate", "none", "--eval-every", str(args.rounds)]
        fsl(old, *train, "--out", str(tmp / "run-old"), cache=tmp / "cache")
        fsl(ROOT, *train, "--out", str(tmp / "run-new"), cache=tmp / "cache")
        rows = [[json.loads(line) for line in (tmp / run / "metrics.jsonl").read_text().splitlines()]
                for run in ("run-old", "run-new")]
        clients = sorted(rows[0][-1]["d_loss"])
    print(f"{args.against} against this checkout: {args.devices} (budgets removed; clients {', '.join(clients)}), "
          f"{args.rounds} rounds of {args.steps} steps, --emulate none")
    print("round | max |g_loss diff| | max |d_loss diff| | |FID diff| | |KID diff| | same bytes per device")
    for r in differences(*rows):
        print(" | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in r))


if __name__ == "__main__":
    main()
