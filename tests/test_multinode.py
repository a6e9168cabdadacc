"""Two torchrun agents with ``--nnodes 2`` on this machine, as README's several-machines
example runs on two (only the addresses differ): one round trains, the metrics and each
node's share of the files are where they belong."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from planner.planfile import write_plan
from tests.helpers import assert_opened_exactly, chain_plan, digits_file
from trainer.backends.dist import free_port

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def test_two_torchrun_nodes_train_a_round(tmp_path):
    plan = chain_plan("dcgan", [2, 6])  # c0-d0 (data) -> c0-d1 -> c0-d2, plus the server
    write_plan(plan, tmp_path / "plan.json")
    ranks = {"server": 0, "c0-d1": 1, "c0-d0": 2, "c0-d2": 3}  # the data device lives on node 1
    (tmp_path / "ranks.json").write_text(json.dumps(ranks))
    port = free_port()
    env = os.environ | {"FSL_RANKS": str(tmp_path / "ranks.json"), "GLOO_SOCKET_IFNAME": "lo"}
    torchrun = str(Path(sys.executable).parent / "torchrun")
    agents = []
    for node, out in ((0, "node-a"), (1, "node-b")):
        cmd = [torchrun, "--nnodes", "2", "--node-rank", str(node), "--nproc-per-node", "2",
               "--master-addr", "127.0.0.1", "--master-port", str(port),
               "-m", "cli", "train", "--plan", str(tmp_path / "plan.json"), "--backend", "dist",
               "--out", str(tmp_path / out), "--rounds", "1", "--steps-per-round", "2", "--emulate", "none",
               "--eval-every", "0", "--timeout-s", "20"]
        agents.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True, start_new_session=True))
    try:
        logs = [a.communicate(timeout=240)[0] for a in agents]
    finally:
        for a in agents:
            if a.poll() is None:
                os.killpg(a.pid, signal.SIGKILL)
                a.wait()
    assert [a.returncode for a in agents] == [0, 0], "\n\n".join(logs)[-4000:]
    a, b = tmp_path / "node-a", tmp_path / "node-b"
    (m,) = [json.loads(line) for line in (a / "metrics.jsonl").read_text().splitlines()]
    assert m["round"] == 1 and m["clients"]["client0"]["steps"] == 2 and m["g_loss"] is not None
    assert {"c0-d0", "c0-d1", "c0-d2"} == set(m["devices"])
    assert (a / "checkpoint" / "server.pt").is_file() and not (b / "checkpoint" / "server.pt").exists()
    assert (b / "checkpoint" / "client-client0-r0001.pt").is_file()  # the client's file stays on its node
    assert not list((a / "checkpoint").glob("client-*"))
    rows = {r["role"]: r for r in json.loads((a / "processes.json").read_text())["processes"]}
    assert rows["c0-d0"]["training_samples"] > 0 and rows["server"]["training_samples"] == 0
    # from each rank's file records, the whole run's on the rank's own node; no evaluation:
    # the server opens no data file either
    assert_opened_exactly(rows["c0-d0"], [digits_file()], out=b)
    for role, node in (("server", a), ("c0-d1", a), ("c0-d2", b)):
        assert_opened_exactly(rows[role], [], out=node)
    assert len({r["pid"] for r in rows.values()}) == 4
