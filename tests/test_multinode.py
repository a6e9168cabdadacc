"""docs/machines.md's several-machines block, run as written with two torchrun agents on
this machine: only the addresses change. The block is read from that page itself, so the
documented command is the tested one. Its server has rank 2, on the second machine, not
rank 0: that process prints the summary; the metrics and each machine's share of the
files are where they belong."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from planner.planfile import load_plan, write_plan
from tests.helpers import assert_opened_exactly, chain_plan, digits_file
from trainer.backends.dist import free_port

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
README_ADDR, README_PORT = "10.0.0.1", "29500"


def readme_block() -> tuple[dict[str, int], list[list[str]]]:
    """The ranks file and the two commands (as argv, env assignments first) of
    docs/machines.md, "Real processes, several machines"."""
    text = (ROOT / "docs" / "machines.md").read_text()
    section = text[text.index("# Real processes, several machines"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    ranks = json.loads(re.search(r"# ranks.json: (\{.*\})", block).group(1))
    commands = [shlex.split(c) for c in block.replace("\\\n", " ").splitlines() if c and not c.startswith("#")]
    return ranks, commands


def localised(argv: list[str], port: int) -> tuple[dict[str, str], list[str]]:
    """``argv`` with this machine's address and ``port``; env assignments split off."""
    env = dict(a.split("=", 1) for a in argv if re.match(r"^[A-Z_]+=", a))
    cmd = [a for a in argv if not re.match(r"^[A-Z_]+=", a)]
    cmd = ["127.0.0.1" if a == README_ADDR else str(port) if a == README_PORT else a for a in cmd]
    assert cmd[0] == "torchrun"
    return env, [str(Path(sys.executable).parent / "torchrun"), *cmd[1:]]


def test_readme_block_is_what_this_test_needs():
    ranks, commands = readme_block()
    assert len(commands) == 2 and ranks["server"] != 0
    for argv in commands:
        assert "--emulate" in argv and argv[argv.index("--emulate") + 1] == "none"
        assert argv.count(README_ADDR) == 1 and argv.count(README_PORT) == 1


def _run_agents(tmp_path: Path, plan, ranks: dict, commands: list[list[str]]) -> tuple[list[Path], list[str]]:
    """One torchrun agent per command, each in its own folder (a machine) holding the plan
    and the ranks file; returns the folders and each agent's output, after both ended."""
    port = free_port()
    agents, nodes = [], []
    for i, argv in enumerate(commands):
        node = tmp_path / f"machine-{'ab'[i]}"
        node.mkdir()
        write_plan(plan, node / "plan.json")
        (node / "ranks.json").write_text(json.dumps(ranks))
        env, cmd = localised(argv, port)
        full_env = os.environ | env | {"GLOO_SOCKET_IFNAME": "lo", "PYTHONPATH": str(ROOT)}
        agents.append(subprocess.Popen(cmd, cwd=node, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True, start_new_session=True))
        nodes.append(node)
    try:
        logs = [a.communicate(timeout=400)[0] for a in agents]
    finally:
        for a in agents:
            if a.poll() is None:
                os.killpg(a.pid, signal.SIGKILL)
                a.wait()
    assert [a.returncode for a in agents] == [0, 0], "\n\n".join(logs)[-4000:]
    return nodes, logs


def test_readme_two_machine_command_trains(tmp_path):
    ranks, commands = readme_block()
    plan = chain_plan("dcgan", [2, 6])  # c0-d0 (data) -> c0-d1 -> c0-d2, plus the server
    nodes, logs = _run_agents(tmp_path, plan, ranks, commands)
    a, b = (n / "run" for n in nodes)  # machine A: c0-d1 and the data device; B: the server and c0-d2
    rounds = [json.loads(line) for line in (b / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in rounds] == [1, 2]
    assert rounds[0]["clients"]["client0"]["steps"] == 10 and rounds[-1]["g_loss"] is not None
    assert {"c0-d0", "c0-d1", "c0-d2"} == set(rounds[0]["devices"])
    assert (b / "checkpoint" / "server.pt").is_file() and not (a / "checkpoint" / "server.pt").exists()
    assert (a / "checkpoint" / "client-client0-r0002.pt").is_file()  # the client's file stays on its machine
    assert not list((b / "checkpoint").glob("client-*"))
    rows = {r["role"]: r for r in json.loads((b / "processes.json").read_text())["processes"]}
    assert rows["c0-d0"]["training_samples"] > 0 and rows["server"]["training_samples"] == 0
    # from each rank's file records, the whole run's on the rank's own node: the data device
    # and the server (its held-out split, README's command evaluates) read the digits file
    assert_opened_exactly(rows["c0-d0"], [digits_file()], out=a)
    assert_opened_exactly(rows["server"], [digits_file()], out=b)
    for role, node in (("c0-d1", a), ("c0-d2", b)):
        assert_opened_exactly(rows[role], [], out=node)
    assert len({r["pid"] for r in rows.values()}) == 4
    # the server's process (rank 2, machine B) printed the summary; machine A none
    assert "measured against the plan" in logs[1] and "measured against the plan" not in logs[0], logs[1][-2000:]


def test_adapt_under_torchrun_switches_plans_on_every_machine(tmp_path):
    """docs/machines.md's two machines with ``--adapt`` and c0-d1 (machine A) slowed 20x from round
    2: the server (machine B) switches plans, machine A's processes receive the new plan,
    and all four resume on it and finish the run. Capacities of five layers a device
    (eleven layers) keep every plan on all three devices, as torchrun's fixed world needs."""
    ranks, commands = readme_block()
    base = chain_plan("dcgan", [2, 6])
    c = base.clients[0]
    plan = replace(base, clients=(replace(c, costs=replace(c.costs, capacity_bytes=(5, 5, 5))),))
    extra = ["--adapt", "--slowdown", "c0-d1=20@2", "--rounds", "4", "--steps-per-round", "3", "--eval-every", "0",
             "--timeout-s", "30"]
    for argv in commands:
        i = argv.index("--rounds")
        del argv[i:i + 2]
        argv[argv.index("--emulate") + 1] = "sleep"  # --slowdown is emulated
        argv += extra
    nodes, logs = _run_agents(tmp_path, plan, ranks, commands)
    a, b = (n / "run" for n in nodes)
    rows = [json.loads(line) for line in (b / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in rows] == [1, 2, 3, 4]
    switches = [m["plan_switch"] for m in rows if m.get("plan_switch")]
    assert switches, [m.get("plan_switch") for m in rows]
    for s in switches:  # every machine holds each plan it switched to, byte for byte
        assert (a / s["plan"]).read_bytes() == (b / s["plan"]).read_bytes()
    new = load_plan(b / switches[-1]["plan"]).clients[0].stages
    assert [(s.start, s.end) for s in new] != [(s.start, s.end) for s in c.stages]
    assert {s.device for s in new} == {"c0-d0", "c0-d1", "c0-d2"}
    assert (a / "checkpoint" / "client-client0-r0004.pt").is_file()
    assert "Traceback" not in logs[0] + logs[1]
