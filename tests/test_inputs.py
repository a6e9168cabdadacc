"""Wrong inputs end in exit 2 with one line naming the file, never a traceback (SPEC §3).

Every file of ``corpus/profiles`` (malformed device profiles) and ``corpus/plans``
(malformed plans, made by ``corpus/make_plans.py`` from ``corpus/base_plan.json``) goes
through ``fsl plan --devices F`` and ``fsl show F``. Hypothesis then feeds random
profiles, mostly valid and some with one field broken, to ``parse_profile`` and the
valid ones on through the planner.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from cli import app
from planner import plan
from planner.check import violations
from planner.devices import Profile, parse_profile
from planner.errors import InputError, NoFeasiblePlan
from planner.models import dcgan_discriminator
from planner.planfile import load_plan

ROOT = Path(__file__).parent.parent
CORPUS = Path(__file__).parent / "corpus"
LAB = str(ROOT / "profiles" / "lab.json")
_SCRIPT = Path(sys.executable).parent / "fsl"  # the console script, else the same entry point
FSL = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-c", "from cli import main; main()"]
PROFILES = sorted((CORPUS / "profiles").glob("*.json"))
PLANS = sorted((CORPUS / "plans").glob("*.json"))
BASE_PLAN = CORPUS / "base_plan.json"
NOT_PROFILES = [p for p in PLANS if p.stem != "device_profile_given_as_plan"]  # that one is lab.json


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def _assert_one_line_naming(stderr: str, path: Path) -> None:
    lines = _error_lines(stderr)
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{stderr[:2000]}"
    assert str(path) in lines[0], lines[0]
    assert "Traceback" not in stderr


def _invoke(args: list[str]):
    return CliRunner().invoke(app, args)


def test_corpus_is_large_enough():
    assert len(PROFILES) >= 30 and len(PLANS) >= 12


@pytest.mark.parametrize("path", PROFILES + NOT_PROFILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_fsl_plan_rejects_malformed_devices(path: Path, tmp_path: Path):
    out = tmp_path / "plan.json"
    r = _invoke(["plan", "--devices", str(path), "--out", str(out)])
    assert r.exit_code == 2, (r.exit_code, r.stderr, r.exception)
    _assert_one_line_naming(r.stderr, path)
    assert not out.exists()


@pytest.mark.parametrize("path", PLANS + PROFILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_fsl_show_rejects_malformed_plans(path: Path):
    r = _invoke(["show", str(path)])
    assert r.exit_code == 2, (r.exit_code, r.stderr, r.exception)
    _assert_one_line_naming(r.stderr, path)
    assert r.stdout == ""


def test_base_plan_of_the_corpus_is_valid():
    """The plans corpus is wrong only by its mutations: the plan it starts from loads."""
    plan_ = load_plan(BASE_PLAN)
    assert [c.status for c in plan_.clients] == ["planned"] * 3
    r = _invoke(["show", str(BASE_PLAN)])
    assert r.exit_code == 0, r.stderr


def test_missing_file_and_directory_are_input_errors(tmp_path: Path):
    for args, path in ((["show", str(tmp_path / "nope.json")], tmp_path / "nope.json"),
                       (["plan", "--devices", str(tmp_path)], tmp_path)):
        r = _invoke(args)
        assert r.exit_code == 2, r.stderr
        _assert_one_line_naming(r.stderr, path)


@pytest.mark.parametrize("args, where", [
    (["plan", "--devices", LAB, "--model", "vgg"], "--model"),
    (["plan", "--devices", LAB, "--batch-size", "0"], "--batch-size"),
    (["plan", "--devices", LAB, "--solver", "magic"], "--solver"),
    (["plan", "--devices", LAB, "--objective", "energy"], "--objective"),
    (["train", "--plan", str(BASE_PLAN), "--feedback", "max"], "--feedback"),
])
def test_wrong_options_are_input_errors(args: list[str], where: str, tmp_path: Path):
    r = _invoke([*args, "--out", str(tmp_path / "p.json")])
    assert r.exit_code == 2, r.stderr
    lines = _error_lines(r.stderr)
    assert len(lines) == 1 and where in lines[0], r.stderr


def test_train_refuses_a_plan_that_does_not_match_the_model(tmp_path: Path):
    """A huge batch is refused before anything is allocated; so are tables written for
    another batch size than the plan says, and a device named like the server."""
    r = _invoke(["train", "--plan", str(CORPUS / "plans" / "batch_size_huge.json"), "--out", str(tmp_path / "a")])
    assert r.exit_code == 2 and "batch_size" in r.stderr, r.stderr
    data = json.loads(BASE_PLAN.read_text())
    data["batch_size"] = 32  # the tables are for 64
    (tmp_path / "p.json").write_text(json.dumps(data))
    r = _invoke(["train", "--plan", str(tmp_path / "p.json"), "--out", str(tmp_path / "b")])
    assert r.exit_code == 2, r.stderr
    lines = _error_lines(r.stderr)
    assert len(lines) == 1 and "output_bytes" in lines[0] and "batch_size 32" in lines[0], r.stderr
    r = _invoke(["plan", "--devices", str(CORPUS / "profiles" / "device_named_server.json"),
                 "--out", str(tmp_path / "c.json")])
    assert r.exit_code == 2 and "reserved" in r.stderr, r.stderr


@pytest.mark.slow  # a training run of several seconds
def test_real_processes_exit_2_with_one_line(tmp_path: Path):
    """The installed ``fsl``, each in its own process (run side by side): exit status,
    stderr, stdout, and no crash on 100,000 levels of nesting."""
    cases = [(["plan", "--devices"], CORPUS / "profiles" / "deeply_nested.json"),
             (["plan", "--devices"], CORPUS / "profiles" / "non_utf8_bytes.json"),
             (["show"], CORPUS / "plans" / "memory_over_capacity.json")]
    procs = []
    for i, (command, path) in enumerate(cases):
        extra = ["--out", str(tmp_path / f"p{i}.json")] if command[0] == "plan" else []
        procs.append(subprocess.Popen([*FSL, *command, str(path), *extra], text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for proc, (_, path) in zip(procs, cases):
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 2, (path.name, stderr)
        _assert_one_line_naming(stderr, path)
        assert stdout == ""


# -- random profiles ---------------------------------------------------------------------

JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
    st.sampled_from(["", "96XB", "-1MB", "1e3MB", "MB", "0MB", "1" + "0" * 400 + "GB", "12 GiB", "NaN"]),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
SIZES = st.one_of(
    st.integers(min_value=10**6, max_value=64 * 10**9),
    st.integers(min_value=10**7, max_value=3 * 10**8),  # around what dcgan's layers need
    st.builds(lambda n, unit: f"{n}{unit}", st.integers(min_value=1, max_value=64_000),
              st.sampled_from(["MB", "GB", "MiB", "GiB", "mb", " GB"])),
)
VALID = {
    "processing_time_factor": st.floats(min_value=0.05, max_value=100),
    "capacity": SIZES,
    "bandwidth_mbps": st.one_of(st.floats(min_value=0.1, max_value=10_000), st.integers(1, 10_000)),
    "latency_ms": st.floats(min_value=0, max_value=2_000),
    "data_weight": st.floats(min_value=0.01, max_value=10),
    "step_time_s": st.floats(min_value=0.01, max_value=100),
}


@st.composite
def _value(draw, key: str, broken: bool):
    if broken and draw(st.integers(0, 11)) == 0:
        return draw(JUNK)
    return draw(VALID[key])


@st.composite
def _fields(draw, valid: dict, broken: bool, optional: tuple[str, ...] = ()) -> dict:
    """``valid`` less some ``optional`` keys; when ``broken``, now and then a field dropped
    or an unknown one added."""
    out = {}
    for key, value in valid.items():
        if broken and draw(st.integers(0, 24)) == 0:
            continue
        if key in optional and draw(st.booleans()):
            continue
        out[key] = value
    if broken and draw(st.integers(0, 24)) == 0:
        out[draw(st.sampled_from(["gpu", "name ", "Capacity", "budget_s", "x"]))] = draw(JUNK)
    return out


@st.composite
def profile_dicts(draw, may_break: bool) -> object:
    """A profile as parsed JSON: valid, or (``may_break``, half the time) with some fields wrong."""
    broken = may_break and draw(st.booleans())
    clients = []
    for ci in range(draw(st.integers(1, 3))):
        n = draw(st.integers(1, 4))
        data = draw(st.integers(0, n - 1))
        devices = []
        for di in range(n):
            name = f"c{ci}-d{di}"
            if broken and draw(st.integers(0, 30)) == 0:
                name = draw(st.sampled_from([f"c{ci}", "c0-d0", "", "a b", 3]))
            holds = di == data
            if broken and draw(st.integers(0, 30)) == 0:
                holds = not holds
            dev = {"name": name, "holds_data": holds}
            for key in ("processing_time_factor", "capacity", "bandwidth_mbps", "latency_ms"):
                dev[key] = draw(_value(key, broken))
            devices.append(draw(_fields(dev, broken, ("bandwidth_mbps", "latency_ms"))))
        links = []
        if n > 1:
            for _ in range(draw(st.integers(0, 2))):
                a, b = draw(st.permutations(range(n)))[:2]
                if broken and draw(st.integers(0, 20)) == 0:
                    b = a if draw(st.booleans()) else n
                links.append(draw(_fields({"a": f"c{ci}-d{a}", "b": f"c{ci}-d{b}",
                                           "bandwidth_mbps": draw(_value("bandwidth_mbps", broken)),
                                           "latency_ms": draw(_value("latency_ms", broken))}, broken, ("latency_ms",))))
        client = {"name": f"c{ci}", "devices": devices, "data_weight": draw(_value("data_weight", broken))}
        if links:
            client["links"] = links
        if draw(st.integers(0, 3)) == 0:
            client["budget"] = {"step_time_s": draw(_value("step_time_s", broken))}
        clients.append(draw(_fields(client, broken, ("data_weight",))))
    top = {"schema": "fsl-devices/1", "clients": clients}
    if draw(st.booleans()):
        top["budget"] = {"step_time_s": draw(_value("step_time_s", broken))}
    if broken and draw(st.integers(0, 30)) == 0:
        return draw(st.sampled_from([[top], "fsl-devices/1", None, 3]))
    return draw(_fields(top, broken))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=profile_dicts(may_break=True))
def test_parse_profile_returns_a_profile_or_an_input_error(data):
    try:
        profile = parse_profile(data, source="random.json")
    except InputError as e:
        assert e.source == "random.json" and e.problem
        assert "\n" not in str(e)
        return
    assert isinstance(profile, Profile)
    # accepted: a JSON round trip gives the same profile (nothing JSON cannot carry)
    assert parse_profile(json.loads(json.dumps(data, allow_nan=False))) == profile


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=profile_dicts(may_break=False))
def test_valid_profiles_are_planned_or_excluded_with_reasons(data, dcgan_profile):
    profile = parse_profile(data)
    try:
        result = plan(dcgan_discriminator(), profile, model_profile=dcgan_profile, compare=False)
    except NoFeasiblePlan as e:
        assert set(e.reasons) == {c.name for c in profile.clients}
        assert all(e.reasons.values())
        return
    assert [c.name for c in result.clients] == [c.name for c in profile.clients]
    for c in result.clients:
        if c.status == "planned":
            assert violations(c.costs, c.solver_stages(), c.micro_batches) == []
            assert math.isfinite(c.step_time_s)
        else:
            assert c.status == "excluded" and c.reason and not c.stages
    assert result.round_time_s == pytest.approx(
        result.server["step_s"] + max(c.step_time_s + c.costs.server_transfer_s for c in result.planned))
