"""Experiments on the FSL-GAN paper's claims and future work, written into BENCHMARKS.md.

    python benchmarks/experiments.py [NAME ...] [--quick] [--out DIR]

Names (default: all, in this order):

- ``plan-quality``: every solver on every profile (and a seeded random fleet), a warm-up
  and a timed round under ``--emulate sleep``, the ILP's plan first and again last:
  measured and predicted times as ratios to the ILP's;
- ``cost-model``: predicted against measured compute per device and step time per client,
  from the plan-quality runs (run them first if they are not in this invocation);
- ``clients``: 1, 2, 4, 8 clients on the same total data: FID, G loss, round time;
- ``non-iid``: Dirichlet alpha x aggregation, 3 clients, FID over rounds;
- ``communication``: bytes per step measured against the plan's ``cut_bytes``, and where
  the optimal cut moves as the link gets faster (planning only);
- ``straggler``: one client 10x slower, with and without ``--deadline-s``.

Each writes a table, a figure ``benchmarks/figures/NAME.png`` and a section ``exp-NAME``
of BENCHMARKS.md. Every experiment has a fixed seed; ``--quick`` shrinks every size and
writes to a scratch folder instead (``runs/experiments-quick/``: its own BENCHMARKS.md and
``figures/``), never over BENCHMARKS.md or the committed figures; ``--out DIR`` names
another folder for either mode.
The experiments live in ``exp_plans.py``, ``exp_gan.py`` and ``exp_network.py``; what they
share in ``exp_setup.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `fsl` sets it (cli.py)

from benchmarks import exp_gan, exp_network, exp_plans  # noqa: E402
from benchmarks.common import BENCHMARKS_MD, ROOT, machine, write_section  # noqa: E402
from benchmarks.exp_context import FIGURES, FULL, QUICK, Context  # noqa: E402

SCRATCH = ROOT / "runs" / "experiments-quick"  # runs/ is git-ignored


def destinations(*, quick: bool, out: Path | None) -> tuple[Path, Path]:
    """Where a run writes: (the markdown file of its sections, the folder of its figures).

    A full run without ``--out`` writes the committed BENCHMARKS.md and benchmarks/figures;
    ``--quick`` (tiny sizes, figures that mean nothing) writes SCRATCH unless ``--out`` names
    a folder, and never the committed files, whatever ``--out`` says."""
    if out is None and not quick:
        return BENCHMARKS_MD, FIGURES
    folder = Path(out) if out is not None else SCRATCH
    md, figures = folder / "BENCHMARKS.md", folder / "figures"
    if quick and (md.resolve() == BENCHMARKS_MD.resolve() or figures.resolve() == FIGURES.resolve()):
        raise ValueError(f"--out {out}: --quick would overwrite {md if md.resolve() == BENCHMARKS_MD.resolve() else figures}"
                         f", the committed results; name a scratch folder")
    return md, figures


def _registry() -> dict:
    return {
        "plan-quality": exp_plans.plan_quality,
        "cost-model": exp_plans.cost_model,
        "clients": exp_gan.clients,
        "non-iid": exp_gan.non_iid,
        "communication": exp_network.communication,
        "straggler": exp_network.straggler,
    }


def main(argv: list[str] | None = None) -> None:
    experiments = _registry()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", metavar="NAME", help=f"any of {', '.join(experiments)} (default: all)")
    ap.add_argument("--quick", action="store_true",
                    help=f"tiny sizes, to check the script end to end; writes {SCRATCH.relative_to(ROOT)}/ unless --out")
    ap.add_argument("--out", type=Path, default=None, metavar="DIR",
                    help="write DIR/BENCHMARKS.md and DIR/figures/ instead (default: BENCHMARKS.md and "
                         "benchmarks/figures for a full run)")
    args = ap.parse_args(argv)
    unknown = [n for n in args.names if n not in experiments]
    if unknown:
        ap.error(f"unknown experiment {', '.join(unknown)}; expected any of {', '.join(experiments)}")
    try:
        md, figures = destinations(quick=args.quick, out=args.out)
    except ValueError as e:
        ap.error(str(e))
    names = args.names or list(experiments)
    size = QUICK if args.quick else FULL
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        ctx = Context(quick=args.quick, tmp=Path(d), size=size, md=md, figures=figures)
        for name in names:
            print(f"== {name} ...", flush=True)
            t0 = time.perf_counter()
            body, image = experiments[name](ctx)
            took = time.perf_counter() - t0
            cmd = f"python benchmarks/experiments.py {name}{' --quick' if args.quick else ''}"
            section = (f"## Experiment: {name}\n\nCommand: `{cmd}` ({took:.0f} s). Machine: {machine()}.\n\n"
                       f"{body.rstrip()}\n\n{image}\n")
            write_section(f"exp-{name}", section, path=md)
            print(section, flush=True)
    print(f"all done in {time.perf_counter() - t_all:.0f} s; sections in {md}, figures in {figures}", flush=True)


if __name__ == "__main__":
    main()
