"""Reliability table (issue 5): malformed inputs, injected faults, limits -> RELIABILITY.md.

    python benchmarks/reliability.py

Every malformed profile and plan in ``tests/corpus`` goes through ``fsl plan`` / ``fsl
show`` (in process, as the CLI runs); the faults are injected for real: a device process
SIGKILLed mid-round (dist backend), a checkpoint writer SIGKILLed mid-write, the solver's
time limit hit; the limits are planned with a stopwatch.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `fsl` sets it (cli.py)

from typer.testing import CliRunner  # noqa: E402

from benchmarks.bad_inputs import BEGIN, END  # noqa: E402
from benchmarks.common import ROOT, machine, md_table  # noqa: E402
from cli import app  # noqa: E402

CORPUS = ROOT / "tests" / "corpus"


def run_corpus(tmp: Path) -> tuple[list[list], dict[str, int]]:
    runner = CliRunner()
    rows, codes = [], {}
    cases = [("profile", f, ["plan", "--devices", str(f), "--out", str(tmp / "p.json")])
             for f in sorted((CORPUS / "profiles").glob("*.json"))]
    cases += [("plan", f, ["show", str(f)]) for f in sorted((CORPUS / "plans").glob("*.json"))]
    for kind, f, args in cases:
        r = runner.invoke(app, args)
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        traceback = "Traceback" in r.stderr or r.exception is not None and not isinstance(r.exception, SystemExit)
        codes[r.exit_code] = codes.get(r.exit_code, 0) + 1
        msg = lines[0] if lines else ""
        msg = msg.replace(str(ROOT) + "/", "")
        rows.append([kind, f.name, r.exit_code, len(lines), "yes" if traceback else "no", msg[:110]])
    return rows, codes


WRITER = """
import io, sys, torch
from planner.jsonio import write_atomic
i = 0
while True:
    i += 1
    buf = io.BytesIO()
    torch.save({"version": i, "w": torch.full((2_000_000,), float(i))}, buf)
    write_atomic(sys.argv[1], buf.getvalue())
    print(i, flush=True)
"""


def fault_writer(tmp: Path, trials: int = 5) -> list:
    import torch

    ok = 0
    for k in range(trials):
        target = tmp / f"state{k}.pt"
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        for _ in range(2 + k):
            proc.stdout.readline()
        time.sleep(random.Random(k).uniform(0, 0.05))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        ck = torch.load(target, weights_only=True)
        ok += bool(torch.all(ck["w"] == float(ck["version"])))
    return ["checkpoint writer SIGKILLed mid-write", f"{trials} kills at random moments",
            f"{ok}/{trials} checkpoints loaded intact (the last complete version)", "nothing"]


def fault_device(tmp: Path) -> list:
    from planner import plan
    from planner.devices import load_profile
    from planner.models import dcgan_discriminator
    from planner.planfile import write_plan
    from trainer import DeviceFailure, TrainConfig, train

    lab = plan(dcgan_discriminator(), load_profile(ROOT / "profiles/lab.json"), compare=False)
    write_plan(lab, tmp / "plan.json")
    victim = lab.planned[0].stages[-1].device
    cfg = TrainConfig(plan_path=tmp / "plan.json", out_dir=tmp / "run", backend="dist", rounds=3, steps_per_round=3,
                      emulate="none", eval_every=0, timeout_s=8.0)
    pids, killed = {}, []

    def on_round(m):
        if m["round"] == 1:
            os.kill(pids[victim], signal.SIGKILL)
            killed.append(time.monotonic())

    try:
        train(cfg, on_start=lambda i: pids.update(i["pids"]), on_round=on_round)
        outcome = "run did not fail (unexpected)"
    except DeviceFailure as e:
        outcome = f"stopped {time.monotonic() - killed[0]:.1f} s after the kill: `{e}`"
    left = [p for p in pids.values() if Path(f"/proc/{p}").exists()
            and "Z" not in Path(f"/proc/{p}/stat").read_text().split(")")[-1][:3]]
    hist = train(TrainConfig(**{**cfg.__dict__, "resume": True}))
    return ["device process SIGKILLed mid-round (dist backend)", f"kill {victim} after round 1 of 3 (profiles/lab.json)",
            f"{outcome}; {len(left)} processes left; `--resume` finished rounds {[h['round'] for h in hist]}",
            "round 2's partial work only (round 1 checkpointed)"]


def fault_time_limit() -> list:
    from benchmarks.planner_sweep import random_client
    from planner.ilp import solve_ilp

    p = random_client(12, 64, seed=3)
    t0 = time.perf_counter()
    sol = solve_ilp(p, time_limit_s=0.05)
    return ["solver time limit hit", "12 devices x 64 layers, `time_limit_s=0.05`",
            f"status `{sol.status}` after {time.perf_counter() - t0:.2f} s, step {sol.step_time_s:.3f} s", "nothing"]


def limit_rows(tmp: Path) -> list[list]:
    import torch
    from torch import nn

    from benchmarks.planner import random_fleet
    from planner import plan
    from planner.devices import parse_profile
    from planner.models import LayeredModel, dcgan_discriminator
    from planner.profile_cache import profile_model

    rows = []
    model = dcgan_discriminator()
    mp = profile_model(model)
    for label, prof in (("1,000 clients x 4 devices", random_fleet(1000, 4, seed=1)),
                        ("1 client x 64 devices", random_fleet(1, 64, seed=2))):
        t0 = time.perf_counter()
        p = plan(model, parse_profile(prof), model_profile=mp, compare=False, time_limit_s=60)
        rows.append([label, f"{time.perf_counter() - t0:.1f} s", f"{len(p.planned)} planned, solver {p.solver['status']}"])
    seq = nn.Sequential(*[m for _ in range(66) for m in (nn.Conv2d(4, 4, 3, 1, 1), nn.LeakyReLU(0.2), nn.Identity())],
                        nn.Flatten(), nn.Linear(4 * 28 * 28, 1))
    deep = LayeredModel.from_module("deep200", nn.Sequential(nn.Conv2d(1, 4, 3, 1, 1), *seq), torch.zeros(1, 1, 28, 28))
    t0 = time.perf_counter()
    mp = profile_model(deep, batch_size=8, use_cache=False)
    prof_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    p = plan(deep, parse_profile(random_fleet(4, 6, seed=3)), model_profile=mp, compare=False, batch_size=8,
             time_limit_s=60)
    rows.append([f"{len(deep)}-layer model, 4 clients x 6 devices", f"profile {prof_s:.1f} s + plan {time.perf_counter() - t0:.1f} s",
                 f"{len(p.planned)} planned, solver {p.solver['status']}"])
    return rows


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        os.environ.setdefault("FSL_CACHE_DIR", str(tmp / "cache"))
        print("corpus ...", flush=True)
        corpus, codes = run_corpus(tmp)
        print("faults ...", flush=True)
        faults = [fault_device(tmp), fault_writer(tmp), fault_time_limit()]
        print("limits ...", flush=True)
        limits = limit_rows(tmp)
    clean = sum(1 for r in corpus if r[2] == 2 and r[3] == 1 and r[4] == "no")
    text = "\n".join([
        "# Reliability", "",
        f"Made by `python benchmarks/reliability.py` on {machine()}.", "",
        "## Faults injected", "", md_table(["fault", "how", "outcome", "lost"], faults), "",
        "## Limits", "", md_table(["input", "time", "outcome"], limits), "",
        f"## Malformed inputs ({len(corpus)} files; {clean} ended with exit 2, one line, no traceback; "
        f"exit codes {dict(sorted(codes.items()))})", "",
        md_table(["kind", "file", "exit", "stderr lines", "traceback", "message"], corpus), "",
    ])
    old = (ROOT / "RELIABILITY.md").read_text() if (ROOT / "RELIABILITY.md").exists() else ""
    if BEGIN in old:  # benchmarks/bad_inputs.py's section stays
        text = text.rstrip() + "\n\n" + old[old.index(BEGIN):old.index(END) + len(END)] + "\n"
    (ROOT / "RELIABILITY.md").write_text(text)
    print(text[:3000])


if __name__ == "__main__":
    main()
