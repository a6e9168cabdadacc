"""A network testbed on one Linux host: each role in its own network namespace, joined to
a bridge by a veth pair whose rate ``tc``'s token bucket (``tbf``) shapes both ways.

::

    ns <run>-0 (server)      ns <run>-1 (a-phone)      ns <run>-2 (a-laptop)
      eth0 10.77.0.1           eth0 10.77.0.2            eth0 10.77.0.3      <- tbf: uplink
        |                        |                         |
      v0 ---------------------- v1 ----- br0 ------------ v2                 <- tbf: downlink
                          ns <run>-hub

A message from ``a`` to ``b`` crosses ``a``'s uplink and ``b``'s downlink, so it moves at
the smaller of the two rates: the profile's rule for a link between two devices (SPEC
§1). Only the rate is shaped: this kernel has no ``netem``, so latency cannot be added
(a link's latency here is what the veths, the bridge and the processes cost). Pairwise
``links`` of a profile are not shaped either: each role has one rate.

Every name carries a per-run prefix; the namespaces (and with them the veths, the bridge
and the qdiscs) are removed on exit, also when setting up failed halfway. Nothing is
routed outside: the namespaces hold only their own addresses. Roles run as separate
processes launched with ``ip netns exec NS env RANK=.. WORLD_SIZE=.. MASTER_ADDR=..
MASTER_PORT=.. FSL_RANKS=.. GLOO_SOCKET_IFNAME=eth0 python -m cli ...``: the torchrun
code path of ``trainer.backends.dist`` (multiprocessing cannot enter a namespace).

Needs root and ``ip``/``tc`` with tbf; :func:`unavailable` says why not, for a skip.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUBNET = "10.77.0"
PORT = 29500  # each namespace has its own ports: no clash with anything outside
QUEUE_MS = 200  # tbf's queue, in ms at the rate: deep enough that TCP is not throttled by drops


def _ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(args)
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=30)


def unavailable() -> str | None:
    """Why a testbed cannot be built here, or None if it can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not shutil.which("ip") or not shutil.which("tc"):
        return "needs the ip and tc commands (iproute2)"
    try:
        with Testbed({"probe": 10.0}):
            pass
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        return f"cannot build a namespace with a tbf-shaped veth here: {detail.strip()[:200]}"
    return None


class Testbed:
    """Namespaces for ``rates_mbps``'s roles (None: not shaped), as a context manager."""

    __test__ = False  # not a pytest test class, despite its name

    def __init__(self, rates_mbps: dict[str, float | None]):
        self.rates = dict(rates_mbps)
        self.prefix = f"fsl{secrets.token_hex(3)}"
        self.hub = f"{self.prefix}-hub"
        self.roles = list(self.rates)
        self.made: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self._tmp = tempfile.TemporaryDirectory(prefix=f"{self.prefix}-")

    def ns(self, role: str) -> str:
        return f"{self.prefix}-{self.roles.index(role)}"

    def address(self, role: str) -> str:
        return f"{SUBNET}.{self.roles.index(role) + 1}"

    def __enter__(self) -> "Testbed":
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _netns(self, name: str) -> None:
        _ip("ip", "netns", "add", name)
        self.made.append(name)
        _ip("ip", "link", "set", "lo", "up", ns=name)

    def _build(self) -> None:
        self._netns(self.hub)
        _ip("ip", "link", "add", "br0", "type", "bridge", ns=self.hub)
        _ip("ip", "link", "set", "br0", "up", ns=self.hub)
        for k, role in enumerate(self.roles):
            ns, port = self.ns(role), f"v{k}"
            self._netns(ns)
            _ip("ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", port, "netns", self.hub)
            _ip("ip", "link", "set", port, "master", "br0", ns=self.hub)
            _ip("ip", "link", "set", port, "up", ns=self.hub)
            _ip("ip", "addr", "add", f"{self.address(role)}/24", "dev", "eth0", ns=ns)
            _ip("ip", "link", "set", "eth0", "up", ns=ns)
            rate = self.rates[role]
            if rate is not None:
                self._shape(ns, "eth0", rate)  # the role's uplink
                self._shape(self.hub, port, rate)  # its downlink

    @staticmethod
    def _shape(ns: str, dev: str, mbps: float) -> None:
        rate_bytes = mbps * 1e6 / 8
        burst = max(32 * 1024, int(rate_bytes / 100))  # at least 10 ms of traffic, as tbf needs rate / HZ
        _ip("tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", f"{mbps}mbit", "burst", str(burst),
            "latency", f"{QUEUE_MS}ms", ns=ns)

    def qdiscs(self, role: str) -> str:
        """``tc qdisc show`` on both ends of ``role``'s veth."""
        k = self.roles.index(role)
        return (_ip("tc", "qdisc", "show", "dev", "eth0", ns=self.ns(role)).stdout
                + _ip("tc", "qdisc", "show", "dev", f"v{k}", ns=self.hub).stdout)

    def launch(self, ranks: dict[str, int], argv: list[str], *, env: dict[str, str] | None = None,
               logs: Path | None = None, module: str = "cli") -> dict[str, subprocess.Popen]:
        """Start ``python -m MODULE *argv`` for each role in its namespace as rank
        ``ranks[role]`` of a torchrun-style group whose rank 0 is the master."""
        master = next(r for r, k in ranks.items() if k == 0)
        ranks_file = Path(self._tmp.name) / "ranks.json"
        ranks_file.write_text(json.dumps(ranks))
        out = {}
        for role, rank in ranks.items():
            settings = {"RANK": rank, "WORLD_SIZE": len(ranks), "LOCAL_RANK": 0, "MASTER_ADDR": self.address(master),
                        "MASTER_PORT": PORT, "FSL_RANKS": ranks_file, "GLOO_SOCKET_IFNAME": "eth0",
                        **(env or {})}
            cmd = ["ip", "netns", "exec", self.ns(role), "env", *[f"{k}={v}" for k, v in settings.items()],
                   sys.executable, "-m", module, *argv]
            sink = open(logs / f"{role}.log", "w") if logs else subprocess.DEVNULL  # noqa: SIM115 - closed below
            try:
                p = subprocess.Popen(cmd, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
            finally:
                if logs:
                    sink.close()
            self.procs.append(p)
            out[role] = p
        return out

    def wait(self, procs: dict[str, subprocess.Popen], timeout_s: float) -> dict[str, int]:
        """Every process's exit code; those still running after ``timeout_s`` are killed (-9)."""
        codes = {}
        for role, p in procs.items():
            try:
                codes[role] = p.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                codes[role] = p.wait()
        return codes

    def close(self) -> None:
        for p in self.procs:  # only what this testbed started, by process group
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
        self.procs.clear()
        for name in reversed(self.made):
            _ip("ip", "netns", "del", name, check=False)
        self.made.clear()
        self._tmp.cleanup()
