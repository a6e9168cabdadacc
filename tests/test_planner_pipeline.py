"""The planner end to end on the example profiles, and ``fsl plan`` / ``fsl show`` on top.

Every plan is checked against SPEC §2 by ``planner.check`` and its optimality against the
exact DP of ``planner.reference`` on the client's own tables. The model profile is the
synthetic dcgan one (``conftest.py``), so the numbers do not depend on this machine.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from planner import plan
from planner.check import step_time_s, violations
from planner.devices import load_profile, parse_profile
from planner.errors import NoFeasiblePlan
from planner.models import dcgan_discriminator
from planner.planfile import Plan, load_plan, write_plan
from planner.reference import solve_reference

ROOT = Path(__file__).parent.parent
EXAMPLES = sorted((ROOT / "profiles").glob("*.json"))
_SCRIPT = Path(sys.executable).parent / "fsl"  # the console script, else the same entry point
FSL = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-c", "from cli import main; main()"]


def _device(name: str, capacity: str, *, factor: float = 1.0, data: bool = False) -> dict:
    return {"name": name, "processing_time_factor": factor, "capacity": capacity,
            "bandwidth_mbps": 100, "latency_ms": 5, "holds_data": data}


def _profile(clients: dict[str, list[dict]], budget_s: float | None = None) -> dict:
    out = {"schema": "fsl-devices/1", "clients": [{"name": n, "devices": d} for n, d in clients.items()]}
    if budget_s is not None:
        out["budget"] = {"step_time_s": budget_s}
    return out


# Every device too small for dcgan's first layer (13.3 MB), or for the rest of the model.
INFEASIBLE = _profile({
    "tiny-a": [_device("ta-watch", "4MB", data=True), _device("ta-band", "8MB")],
    "tiny-b": [_device("tb-phone", "20MB", data=True), _device("tb-watch", "10MB")],
})
# fast fits in its budget; slow has the memory but not the speed.
ONE_TOO_SLOW = _profile({
    "fast": [_device("f-phone", "1GB", data=True)],
    "slow": [_device("s-phone", "1GB", factor=50.0, data=True)],
}, budget_s=2.0)


def _write(tmp_path: Path, name: str, data: dict) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def _plan_file(path: Path, dcgan_profile) -> Plan:
    return plan(dcgan_discriminator(), load_profile(path), model_profile=dcgan_profile, devices_file=str(path))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_plans_are_feasible_and_optimal(path: Path, dcgan_profile):
    result = _plan_file(path, dcgan_profile)
    assert result.solver["status"] == "optimal"
    for c in result.clients:
        ref = solve_reference(c.costs, objective=result.objective)
        if c.status == "excluded":
            assert c.reason and not c.stages and c.step_time_s is None
            assert ref.status == "infeasible", f"{c.name} excluded, the reference plans it: {ref}"
            continue
        stages = c.solver_stages()
        assert violations(c.costs, stages, c.micro_batches) == []
        assert c.step_time_s == pytest.approx(step_time_s(c.costs, stages, c.micro_batches), rel=1e-12)
        assert ref.status == "optimal"
        assert c.step_time_s <= ref.step_time_s * (1 + 1e-6), f"{c.name}: ILP {c.step_time_s}, DP {ref.step_time_s}"
        for s, st in zip(stages, c.stages):
            assert st.memory_bytes == sum(c.costs.memory_bytes[s.device][s.start:s.end])
            assert st.memory_bytes <= c.costs.capacity_bytes[s.device]
        assert st.transfer_s == 0.0  # the last stage sends nothing on
        overheads = sum(c.costs.overhead(s.device) for s in stages)  # latency: one micro-batch
        assert math.isclose(sum(st.compute_s + st.transfer_s for st in c.stages) + overheads, c.step_time_s,
                            rel_tol=1e-9)
    assert result.round_time_s == pytest.approx(
        result.server["step_s"] + max(c.step_time_s + c.costs.server_transfer_s for c in result.planned))


def test_example_exclusions_say_why(dcgan_profile):
    """edge.json's remote station is too slow for its budget; wearables' band too small."""
    edge = _plan_file(ROOT / "profiles" / "edge.json", dcgan_profile)
    remote = next(c for c in edge.clients if c.name == "remote-station")
    assert remote.status == "excluded" and "budget 3.00 s" in remote.reason and "over by" in remote.reason
    wear = _plan_file(ROOT / "profiles" / "wearables.json", dcgan_profile)
    band = next(c for c in wear.clients if c.name == "tracker-4")
    assert band.status == "excluded" and "t4-fitness-band" in band.reason and "capacity" in band.reason


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_write_then_load_gives_the_same_plan(path: Path, dcgan_profile, tmp_path: Path):
    result = _plan_file(path, dcgan_profile)
    write_plan(result, tmp_path / "plan.json")
    assert load_plan(tmp_path / "plan.json") == result


def test_nothing_fits_raises_no_feasible_plan(dcgan_profile):
    with pytest.raises(NoFeasiblePlan) as info:
        plan(dcgan_discriminator(), parse_profile(INFEASIBLE), model_profile=dcgan_profile)
    assert set(info.value.reasons) == {"tiny-a", "tiny-b"}
    assert "ta-watch" in info.value.reasons["tiny-a"]  # the data device cannot hold layer 0
    assert all("capacity" in why or "fits on no device" in why for why in info.value.reasons.values())


def test_budget_excludes_the_slow_client(dcgan_profile):
    result = plan(dcgan_discriminator(), parse_profile(ONE_TOO_SLOW), model_profile=dcgan_profile)
    fast, slow = result.clients
    assert fast.status == "planned" and fast.step_time_s <= 2.0
    assert slow.status == "excluded" and "budget 2.00 s" in slow.reason
    assert result.round_time_s == pytest.approx(0.04 + fast.step_time_s + fast.costs.server_transfer_s)


# -- the command line ---------------------------------------------------------------------

def test_fsl_plan_exit_3_with_reasons_when_nothing_fits(tmp_path: Path, profile_cache):
    devices = _write(tmp_path, "tiny.json", INFEASIBLE)
    out = tmp_path / "plan.json"
    r = CliRunner().invoke(app, ["plan", "--devices", str(devices), "--out", str(out)])
    assert r.exit_code == 3, (r.stderr, r.exception)
    assert "Traceback" not in r.stderr
    assert "tiny-a:" in r.stderr and "tiny-b:" in r.stderr and "capacity" in r.stderr
    assert not out.exists()


def test_fsl_plan_writes_a_plan_and_shows_it(tmp_path: Path, profile_cache, dcgan_profile):
    devices = ROOT / "profiles" / "lab.json"
    out = tmp_path / "plan.json"
    r = CliRunner().invoke(app, ["plan", "--devices", str(devices), "--out", str(out)])
    assert r.exit_code == 0, (r.stderr, r.exception)
    written = load_plan(out)
    assert written.clients == _plan_file(devices, dcgan_profile).clients  # the cached profile was used
    for name in ("clinic-a", "household-b", "hospital-c"):
        assert name in r.stdout


def test_fsl_show_renders_planned_and_excluded_clients(tmp_path: Path, dcgan_profile):
    path = tmp_path / "plan.json"
    write_plan(plan(dcgan_discriminator(), parse_profile(ONE_TOO_SLOW), model_profile=dcgan_profile), path)
    r = CliRunner().invoke(app, ["show", str(path)])
    assert r.exit_code == 0, (r.stderr, r.exception)
    assert "fast" in r.stdout and "f-phone" in r.stdout
    assert "Excluded clients" in r.stdout and "slow" in r.stdout and "budget" in r.stdout


def test_fsl_plan_format_json_prints_the_plan(tmp_path: Path, profile_cache):
    out = tmp_path / "plan.json"
    r = CliRunner().invoke(app, ["plan", "--devices", str(ROOT / "profiles" / "edge.json"),
                                 "--out", str(out), "--format", "json"])
    assert r.exit_code == 0, (r.stderr, r.exception)
    printed = json.loads(r.stdout)
    assert printed == json.loads(out.read_text())
    assert printed["schema"] == "fsl-plan/1"


def test_fsl_plan_format_json_in_a_real_process(tmp_path: Path, profile_cache):
    """Real stdout (not a tty): nothing but the JSON, unwrapped, and exit 0."""
    out = tmp_path / "plan.json"
    r = subprocess.run([*FSL, "plan", "--devices", str(ROOT / "profiles" / "wearables.json"),
                        "--out", str(out), "--format", "json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    printed = json.loads(r.stdout)
    assert printed == json.loads(out.read_text())
    assert [c["status"] for c in printed["clients"]] == ["planned", "planned", "planned", "excluded"]
