"""Planning many clients (planner.fleet): each distinct problem solved once, in worker
processes, shown as a summary; ``fsl show --client`` for one.

References: the same plan with every client solved on its own (``dedup=False``) and in
this process alone (``workers=1``); the plan file re-checked by ``load_plan`` (SPEC §2
rules, each client's step recomputed from its tables); the slowest client found from the
plan's JSON, not from the view.
"""

from __future__ import annotations

import json
import os

from rich.console import Console
from typer.testing import CliRunner

from benchmarks.fleet_profiles import fleet
from cli import app
from views.plan import SUMMARY_FROM_CLIENTS, render_plan
from planner import plan
from planner.devices import parse_profile
from planner.models import dcgan_discriminator
from planner.planfile import load_plan, write_plan


def _clients_json(p) -> list[dict]:
    return p.to_json()["clients"]


def _plan(n: int, profile, budget_s: float = 12.0, **kw):
    devices = parse_profile(fleet(n, devices=4, seed=7, identical=0.5, kits=2, budget_s=budget_s))
    return plan(dcgan_discriminator(), devices, model_profile=profile, devices_file="fleet.json", **kw)


def test_dedup_gives_the_plan_of_solving_each_client(dcgan_profile):
    shared = _plan(16, dcgan_profile, 1.0, workers=1)  # a tight budget: some clients are left out
    alone = _plan(16, dcgan_profile, 1.0, workers=1, dedup=False)
    assert alone.solver["distinct_problems"] == 16
    assert shared.solver["distinct_problems"] < 16  # half the clients copy one of two kits
    assert _clients_json(shared) == _clients_json(alone)
    assert len(shared.planned) >= 4 and any(c.status == "excluded" for c in shared.clients)
    # a copied kit's stages name its own devices, not those of the client solved first
    for c in shared.planned:
        assert all(s.device.startswith(c.name.replace("client-", "c") + "-") for s in c.stages)


def test_dedup_holds_under_throughput(dcgan_profile):
    kw = dict(objective="throughput", workers=1, compare=False)
    assert _clients_json(_plan(10, dcgan_profile, **kw)) == _clients_json(_plan(10, dcgan_profile, dedup=False, **kw))


def test_worker_processes_give_the_plan_of_one_process(dcgan_profile, tmp_path):
    serial = _plan(12, dcgan_profile, workers=1)
    parallel = _plan(12, dcgan_profile, workers=2)
    assert (serial.solver["workers"], parallel.solver["workers"]) == (1, 2)
    assert _clients_json(parallel) == _clients_json(serial)
    write_plan(parallel, tmp_path / "plan.json")  # written compact past 50 clients; checked on load either way
    assert _clients_json(load_plan(tmp_path / "plan.json")) == _clients_json(parallel)


def _rendered(p, **kw) -> str:
    with open(os.devnull, "w") as sink:
        con = Console(record=True, width=200, file=sink, color_system=None)
        render_plan(p, con, **kw)
    return con.export_text()


def test_summary_past_the_threshold(dcgan_profile):
    many = _plan(SUMMARY_FROM_CLIENTS + 1, dcgan_profile, workers=2)
    text = _rendered(many)
    assert f"{SUMMARY_FROM_CLIENTS + 1} clients: {len(many.planned)} planned" in text
    assert "baselines on the same tables" not in text  # no client's own table
    rows = [c for c in many.to_json()["clients"] if c["status"] == "planned"]
    slowest = max(rows, key=lambda c: c["step_time_s"])
    table = text[text.index("Slowest planned clients"):].split("\n")
    first_row = table[next(i for i, line in enumerate(table) if line.startswith("┡")) + 1]
    assert first_row.split("│")[1].strip() == slowest["name"]
    few = _plan(SUMMARY_FROM_CLIENTS, dcgan_profile, workers=1)
    assert "Slowest planned clients" not in _rendered(few)
    assert _rendered(few).count("baselines on the same tables") == len(few.planned)


def test_show_client_prints_that_client_and_refuses_an_unknown_one(dcgan_profile, tmp_path):
    p = _plan(SUMMARY_FROM_CLIENTS + 2, dcgan_profile, workers=2)
    write_plan(p, tmp_path / "plan.json")
    name = p.planned[-1].name
    r = CliRunner().invoke(app, ["show", str(tmp_path / "plan.json"), "--client", name], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert f"{name}: step {p.planned[-1].step_time_s:.3f} s" in r.stdout
    assert "Slowest planned clients" not in r.stdout
    others = {c.name for c in p.clients} - {name}
    assert not any(f"{o}: step" in r.stdout for o in others)
    r = CliRunner().invoke(app, ["show", str(tmp_path / "plan.json"), "--client", name, "--format", "json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["name"] == name
    r = CliRunner().invoke(app, ["show", str(tmp_path / "plan.json"), "--client", "nobody"])
    assert r.exit_code == 2
    assert r.stderr.strip().splitlines() == [
        f"error: --client: no client named 'nobody' in {tmp_path / 'plan.json'} (its clients: client-0, client-1, "
        f"client-2, ... ({len(p.clients)} in all))"]
    assert "Traceback" not in r.output


def test_fsl_plan_summarises_a_fleet(profile_cache, tmp_path):
    n = SUMMARY_FROM_CLIENTS + 1
    (tmp_path / "fleet.json").write_text(json.dumps(fleet(n, devices=4, seed=2)))
    r = CliRunner().invoke(app, ["plan", "--devices", str(tmp_path / "fleet.json"), "--out",
                                 str(tmp_path / "plan.json")], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert f"{n} clients:" in r.stdout and "fsl show PLAN --client NAME" in r.stdout
    assert f"{n} clients:" in (tmp_path / "plan.txt").read_text()
