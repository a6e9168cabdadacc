"""The ``fsl`` command line (SPEC §3): wires the planner and trainer, renders with rich.

Exit codes: 0 done; 2 a wrong input (one line naming the file and field, no traceback);
3 no client can be planned within its budgets.
"""

from __future__ import annotations

import os

# Several roles call torch from their own threads (local backend); OpenMP's default of
# spinning idle workers then steals the cores from the one that computes (measured in
# BENCHMARKS.md). Must be set before torch starts its thread pool.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json  # noqa: E402
import sys  # noqa: E402
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from planner.errors import InputError, NoFeasiblePlan
from planner.ga import DEFAULT_GENERATIONS, DEFAULT_POPULATION
from views.plan import SUMMARY_FROM_CLIENTS, find_client, plan_options, render_plan, write_plan_table
from views.profile import render_profile
from views.train import TrainProgress, render_summary

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Federated split learning for GANs: plan discriminator segments on devices, then train.")
out = Console(width=None if sys.stdout.isatty() else 120)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 120)


MODEL_HELP = ("discriminator: dcgan, dcgan64, resnet, or your own: path/to/file.py:factory or module.path:factory "
              "(docs/own-data.md; the file is executed)")


class Fmt(str, Enum):
    table = "table"
    json = "json"


def _fail(code: int, message: str) -> None:
    err.print(message, markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _guard(fn):
    """Turn input errors into exit 2 (one line) and infeasibility into exit 3."""
    try:
        return fn()
    except InputError as e:
        _fail(2, f"error: {e}")
    except NoFeasiblePlan as e:
        lines = ["no client can be planned within its budgets:"]
        lines += [f"  {name}: {why}" for name, why in e.reasons.items()]
        _fail(3, "\n".join(lines))


def _model(reference: str, timeout_s: float):
    """The discriminator ``--model`` names: a built-in, or a user factory (planner.usermodel),
    run first in a child process (planner.factorycheck)."""
    from planner.factorycheck import vet
    from planner.usermodel import build_model

    vet(reference, source="--model", timeout_s=timeout_s)
    return build_model(reference, source="--model")


MODEL_TIMEOUT_HELP = "seconds a --model factory may take (it runs first in a child process)"


def _warn_ranks() -> None:
    """FSL_RANKS means something only to torchrun's ranks; set elsewhere it is said, not ignored."""
    if "FSL_RANKS" in os.environ and not ("RANK" in os.environ and "WORLD_SIZE" in os.environ):
        err.print("warning: FSL_RANKS is set but this is not a torchrun rank (no RANK/WORLD_SIZE): it is ignored, "
                  "and this command starts every process itself", markup=False, highlight=False)


def _check_batch(batch_size: int) -> None:
    from planner.planschema import MAX_BATCH

    if not 1 <= batch_size <= MAX_BATCH:
        raise InputError("--batch-size", None, f"must be within 1..{MAX_BATCH}, found {batch_size}")


@app.command("plan")
def plan_cmd(
    devices: Path = typer.Option(..., "--devices", help="device profile (fsl-devices/1 JSON)"),
    model: str = typer.Option("dcgan", help=MODEL_HELP),
    model_timeout_s: float = typer.Option(60.0, "--model-timeout-s", help=MODEL_TIMEOUT_HELP),
    batch_size: int = typer.Option(64, "--batch-size", help="samples per batch per client"),
    solver: str = typer.Option("ilp", help="ilp (optimal), reference (exact DP), fsl-gan, uniform, params, "
                               "ga (HuSCF-GAN's genetic algorithm)"),
    objective: str = typer.Option("latency", help="latency (sequential) or throughput (pipelined)"),
    micro_batches: Optional[str] = typer.Option(None, "--micro-batches", help="throughput: the M the solver may "
                                                "pick, e.g. 1,2,4,8 (default: the batch size's divisors up to 16)"),
    codecs: str = typer.Option("none", help="encodings a cut may use: none,fp16,int8 (a codec changes the numbers)"),
    recompute: str = typer.Option("auto", help="auto: a stage may recompute its activations; off: never"),
    time_limit: Optional[float] = typer.Option(None, "--time-limit", help="solver seconds per client; "
                                               "past it the best plan found is reported as feasible"),
    out_path: Path = typer.Option(Path("plan.json"), "--out", help="where to write the plan (and its table beside it)"),
    fmt: Fmt = typer.Option(Fmt.table, "--format", help="how to show the plan"),
    ga_population: int = typer.Option(DEFAULT_POPULATION, "--ga-population",
                                      help="--solver ga: individuals per generation (published: 1000)"),
    ga_generations: int = typer.Option(DEFAULT_GENERATIONS, "--ga-generations",
                                       help="--solver ga: generations (published: 1000)"),
    ga_seed: int = typer.Option(0, "--ga-seed", help="--solver ga: seed (same seed, same plan)"),
    figure: Optional[Path] = typer.Option(None, "--figure", help="also draw each client's predicted step as a "
                                          "timeline (PNG; seconds for many clients)"),
) -> None:
    """Profile the model, plan every client, write the plan and show it."""
    from planner import plan
    from planner.devices import load_profile
    from planner.ga import GASettings
    from planner.jsonio import check_output_file
    from planner.planfile import write_plan

    def run():
        options = plan_options(objective, micro_batches, codecs, recompute)
        if time_limit is not None and not time_limit > 0:
            raise InputError("--time-limit", None, f"must be > 0 seconds, found {time_limit}")
        _check_batch(batch_size)
        check_output_file(out_path, "--out")
        check_output_file(out_path.with_suffix(".txt"), "--out")
        if figure is not None:
            check_output_file(figure, "--figure")
        try:
            ga = GASettings(population=ga_population, generations=ga_generations, seed=ga_seed)
        except ValueError as e:
            flag = next(f for f in ("population", "generations", "seed") if str(e).startswith(f))
            raise InputError(f"--ga-{flag}", None, str(e)) from None
        profile = load_profile(devices)
        m = _model(model, model_timeout_s)
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TimeElapsedColumn(), console=err, transient=True, disable=fmt == Fmt.json) as bar:
            tasks = {}

            def progress(stage: str, done: int, total: int) -> None:
                label = {"profile": "profiling the model", "solve": "solving clients"}[stage]
                if stage not in tasks:
                    tasks[stage] = bar.add_task(label, total=total)
                bar.update(tasks[stage], completed=done)

            p = plan(m, profile, batch_size=batch_size, solver=solver, objective=objective,
                     time_limit_s=time_limit, devices_file=str(devices), progress=progress, ga=ga, **options)
        write_plan(p, out_path)
        write_plan_table(p, out_path.with_suffix(".txt"))
        _emit(p, fmt, figure, written=[out_path, out_path.with_suffix(".txt")])

    _guard(run)


def _emit(p, fmt: Fmt, figure: Optional[Path], *, written: list[Path], client=None) -> None:
    """Draw ``figure`` if asked, then print the plan (tables or JSON) and what was written
    (``client``: that client alone)."""
    if figure is not None:
        from planner.timeline import draw_plan

        draw_plan(p.clients if client is None else [client], figure)
        written = [*written, figure]
    if fmt == Fmt.json:
        body = p.to_json()
        if client is not None:
            body = next(c for c in body["clients"] if c["name"] == client.name)
        if len(p.clients) > SUMMARY_FROM_CLIENTS:  # rich would indent and colour every number of a fleet
            sys.stdout.write(json.dumps(body) + "\n")
        else:
            out.print_json(json.dumps(body))
    else:
        render_plan(p, out, client=client)
        if written:
            out.print(f"wrote {', '.join(map(str, written))}")


@app.command("show")
def show_cmd(plan_path: Path = typer.Argument(..., metavar="PLAN", help="a plan.json"),
             fmt: Fmt = typer.Option(Fmt.table, "--format"),
             figure: Optional[Path] = typer.Option(None, "--figure", help="also draw each client's predicted step "
                                                   "as a timeline (PNG)"),
             client: Optional[str] = typer.Option(None, "--client", metavar="NAME",
                                                  help="only this client's tables (a plan of many clients shows "
                                                  "a summary)")) -> None:
    """Show a plan as tables: stages, times, memory against capacity, exclusions."""
    from planner.planfile import load_plan

    def run():
        p = load_plan(plan_path)
        chosen = None if client is None else find_client(p, client, str(plan_path))
        _emit(p, fmt, figure, written=[], client=chosen)

    _guard(run)


@app.command("profile")
def profile_cmd(model: str = typer.Option("dcgan", help=MODEL_HELP),
                model_timeout_s: float = typer.Option(60.0, "--model-timeout-s", help=MODEL_TIMEOUT_HELP),
                batch_size: int = typer.Option(64, "--batch-size"),
                no_cache: bool = typer.Option(False, "--no-cache", help="measure again"),
                fmt: Fmt = typer.Option(Fmt.table, "--format")) -> None:
    """Per-layer FLOPs, parameters, memory and measured time of one GAN training step."""
    from planner.graph import build_graph, legal_cuts
    from planner.profile_cache import profile_model

    def run():
        _check_batch(batch_size)
        m = _model(model, model_timeout_s)
        prof = profile_model(m, batch_size=batch_size, use_cache=not no_cache)
        if fmt == Fmt.json:
            out.print_json(json.dumps(prof.to_json()))
        else:
            render_profile(prof, model, set(legal_cuts(build_graph(m))), out)

    _guard(run)


@app.command("calibrate")
def calibrate_cmd(
    devices: Path = typer.Option(..., "--devices", help="device profile (fsl-devices/1 JSON)"),
    model: str = typer.Option("dcgan", help=MODEL_HELP),
    model_timeout_s: float = typer.Option(60.0, "--model-timeout-s", help=MODEL_TIMEOUT_HELP),
    batch_size: int = typer.Option(64, "--batch-size"),
    out_path: Optional[Path] = typer.Option(None, "--out", help="where to write the calibrated profile "
                                            "(default: PROFILE.calibrated.json beside --devices; --devices "
                                            "itself only when named here)"),
    emulate: str = typer.Option("sleep", help="sleep: each device emulated at its factor, as fsl train; "
                                "none: measured flat out (real devices)"),
    repeats: int = typer.Option(5, help="timed passes over the layers per device"),
    links: Optional[bool] = typer.Option(None, "--links/--no-links", help="also measure each client's links and "
                                         "each device's link to the server, replacing the declared ones (default: "
                                         "with --emulate none only; emulated links are the declared ones)"),
    timeout_s: float = typer.Option(600.0, "--timeout-s", help="a process silent this long is a failure"),
    measurements: Optional[Path] = typer.Option(None, "--measurements", help="also write every measurement "
                                                "(each link's probe sizes and times) as JSON"),
) -> None:
    """Measure the model's layers on each device itself (a process per device, as --backend
    dist) and the links between them; write the profile back with each device's calibration."""
    from views.calibration import render_calibration
    from planner.calibration import calibrated_path, calibrated_profile
    from planner.devices import load_profile, parse_profile
    from planner.jsonio import check_output_file, read_json, write_json
    from planner.profile_cache import profile_model
    from trainer import DeviceFailure
    from trainer.adapt.calibrate import CalibrationJob, calibrate

    def run():
        _warn_ranks()
        _check_batch(batch_size)
        if emulate not in ("sleep", "none"):
            raise InputError("--emulate", None, f"expected sleep or none, found {emulate!r}")
        if not 1 <= repeats <= 1000:
            raise InputError("--repeats", None, f"must be within 1..1000, found {repeats}")
        if links and emulate == "sleep":
            raise InputError("--links", None, "measures real links, with --emulate none; under --emulate sleep "
                             "fsl train emulates the declared links, so the profile keeps them (--no-links)")
        target = out_path or calibrated_path(devices)
        check_output_file(target, "--out")
        if measurements is not None:
            check_output_file(measurements, "--measurements")
            if measurements.resolve() == target.resolve():
                raise InputError("--measurements", None, f"{measurements} is also --out")
        m = _model(model, model_timeout_s)
        profile = load_profile(devices)
        job = CalibrationJob(profile=str(devices), model=model, batch_size=batch_size, emulate=emulate,
                             repeats=repeats, links=emulate == "none" if links is None else links,
                             timeout_s=timeout_s)
        def progress(body: dict) -> None:  # only the server's process reports
            err.print(f"{body['step']} {body['device']} ({body['round']}/{body['total']} devices measured)",
                      highlight=False)

        result = calibrate(job, on_progress=progress)
        if result is None:  # a torchrun rank other than the server's
            return
        written = calibrated_profile(read_json(devices, what="device profile"), result)
        parse_profile(written, source=str(target))
        write_json(target, written)
        if measurements is not None:
            write_json(measurements, result)
        render_calibration(result, profile, profile_model(m, batch_size=batch_size), out)
        out.print(f"wrote {target} (links {'measured' if job.links else 'declared, kept from ' + str(devices)})")

    try:
        _guard(run)
    except DeviceFailure as e:
        _fail(1, f"error: {e}")


def _train_config(ctx: typer.Context, config: Optional[Path]):
    """The run's options (:func:`trainer.run.runfile.resolve`) from this command's flags."""
    from trainer.run.runfile import resolve

    given = {k: v for k, v in ctx.params.items() if k not in ("config", "print_config")}
    # typer vendors click: its ParameterSource is not importable in public
    return resolve(given, lambda name: ctx.get_parameter_source(name).name == "COMMANDLINE", config)


@app.command("train")
def train_cmd(
    ctx: typer.Context,
    config: Optional[Path] = typer.Option(None, "--config", help="a TOML file of these options (keys: the flags' "
                                          "names, e.g. steps-per-round = 10); flags given here override it"),
    print_config: bool = typer.Option(False, "--print-config", help="print the resolved options as TOML (what the "
                                      "run writes to DIR/config.toml) and exit without training"),
    plan_path: Optional[Path] = typer.Option(None, "--plan", help="a plan.json from fsl plan"),
    backend: str = typer.Option("local", help="local (one process) or dist (a process per device)"),
    rounds: int = typer.Option(3, help="total rounds of the run (with --resume: until this many are done)"),
    out_dir: Path = typer.Option(Path("runs/latest"), "--out", help="where metrics, samples, checkpoints go"),
    resume: bool = typer.Option(False, help="continue from the checkpoint in --out"),
    steps_per_round: int = typer.Option(10, "--steps-per-round", help="training steps per round"),
    emulate: Optional[str] = typer.Option(None, help="virtual (the local backend's default): a clock per device, "
                                          "advanced by its CPU time x its factor, no sleeping; sleep (the dist "
                                          "backend's default): devices run at their profile's speed in real time; "
                                          "none: flat out"),
    aggregate: str = typer.Option("none", help="between rounds: none, fedavg or swap discriminators"),
    feedback: str = typer.Option("mean", help="the generator steps on the clients' gradients: mean "
                                 "(weighted by data_weight) or sum (the seed's)"),
    deadline_s: Optional[float] = typer.Option(None, "--deadline-s", help="drop a client slower than this per round"),
    data: str = typer.Option("digits", help="digits (embedded), mnist (with --data-root), or images:DIR (a folder "
                             "of PNG/JPEG images, optionally a subfolder per class; 'images:DIR/{client}': one per client)"),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="folder with MNIST IDX files; "
                                             "'DIR/{client}': each client's data device reads its own folder"),
    alpha: Optional[float] = typer.Option(None, help="Dirichlet alpha for non-IID shards (default IID)"),
    eval_every: int = typer.Option(1, "--eval-every", help="rounds between FID/KID evaluations (0: never)"),
    seed: int = typer.Option(0, help="seed for everything"),
    lr: float = typer.Option(2e-4, help="Adam learning rate (generator and discriminators)"),
    g_ema: float = typer.Option(0.0, "--g-ema", metavar="DECAY",
                                help="draw samples and score quality with an exponential moving average of the "
                                "generator's weights, each step ema = DECAY ema + (1 - DECAY) G (0: G itself)"),
    timeout_s: float = typer.Option(60.0, "--timeout-s", help="a device silent this long is a failure"),
    replan_on_failure: bool = typer.Option(False, "--replan-on-failure",
                                           help="plan around a lost device and go on"),
    adapt: bool = typer.Option(False, "--adapt", help="correct the plan's tables by measured compute after "
                               "each round; switch plans when re-solving promises a round 10% shorter"),
    slowdown: list[str] = typer.Option([], "--slowdown", metavar="DEVICE=FACTOR@ROUND",
                                       help="emulated drift: that device runs FACTOR times slower from ROUND on"),
    dp_epsilon: Optional[float] = typer.Option(None, "--dp-epsilon", metavar="E",
                                               help="DP-SGD for every discriminator, noise chosen so that the run's "
                                               "steps spend at most epsilon E per client (at --dp-delta)"),
    dp_noise: Optional[float] = typer.Option(None, "--dp-noise", metavar="SIGMA",
                                             help="DP-SGD with noise multiplier SIGMA instead; epsilon per client per "
                                             "round in metrics.jsonl"),
    dp_clip: Optional[float] = typer.Option(None, "--dp-clip", metavar="C",
                                            help="DP-SGD: clip each sample's gradient over the whole discriminator to "
                                            "L2 norm C [default: 1.0]"),
    dp_delta: float = typer.Option(1e-5, "--dp-delta", metavar="D", help="DP-SGD: the delta of epsilon; below 1 / N "
                                   "of every client"),
    secure_agg: bool = typer.Option(False, "--secure-agg", help="fedavg over pairwise-masked weights: the server "
                                    "sees only their average"),
    cut_noise: float = typer.Option(0.0, "--cut-noise", metavar="SIGMA",
                                    help="Gaussian noise of std SIGMA on the activations the data device sends"),
    tensorboard: Optional[bool] = typer.Option(None, "--tensorboard/--no-tensorboard",
                                               help="write each round's losses, quality, times and samples to "
                                               "DIR/tensorboard/ [default: on when tensorboard is installed]"),
    fid_inception: Optional[Path] = typer.Option(None, "--fid-inception", metavar="WEIGHTS.pth",
                                                 help="also the standard FID, on the FID Inception weights file "
                                                 "pt_inception-2015-12-05-6726825d.pth you have (nothing downloaded)"),
) -> None:
    """Train the federated split GAN as the plan says."""
    from trainer import DeviceFailure, train
    from trainer.backends.dist import reports_here
    from trainer.run.runfile import to_toml

    def run():  # FSL_RANKS outside torchrun: refused by train()'s launch check, one line
        cfg = _train_config(ctx, config)
        if print_config:
            typer.echo(to_toml(cfg), nl=False)
            return
        follower = not reports_here()  # under torchrun only the server's rank reports, whatever its number
        with TrainProgress(out, cfg.rounds, cfg.rounds * cfg.steps_per_round, disable=follower) as progress:
            history = train(cfg, on_round=progress.on_round, on_start=progress.on_start, on_step=progress.on_step)
        if not follower:
            from planner.planfile import load_plan

            write_plan_table(load_plan(Path(cfg.out_dir) / "plan.json"), Path(cfg.out_dir) / "plan.txt")
            render_summary(history, cfg.out_dir, out)

    try:
        _guard(run)
    except DeviceFailure as e:  # a process of --backend dist failed: which device, which round
        _fail(1, f"error: {e}")


@app.command("report")
def report_cmd(run_dir: Path = typer.Argument(..., metavar="DIR", help="a run's folder (fsl train --out)")) -> None:
    """Summarise a run from its files: its rounds as a table here, and DIR/report.html (the
    rounds, figures and sample grids in one self-contained file, no server needed)."""
    from views.report import render_report
    from trainer.run.htmlreport import write_html
    from trainer.run.runfiles import read_run

    def run():
        folder = read_run(run_dir)
        render_report(folder, out)
        out.print(f"wrote {write_html(folder)}")

    _guard(run)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
