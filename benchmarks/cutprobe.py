"""One rank of a cut's traffic on the namespace testbed (``benchmarks.calibration``):
the four messages a cut carries in one GAN step (``planner.schedule.CUT_MESSAGES``),
sent for real over the dist transport, timed at the sending end.

    python -m benchmarks.cutprobe SENDER RECEIVER CUTS_JSON OUT_JSON   (torchrun-style env)

``CUTS_JSON``: ``[{"layer": name, "batch_bytes": output bytes of one batch}, ...]``;
the sender writes ``[{"layer", "seconds": [per repeat]}]`` to ``OUT_JSON``. Both ends
pass every message as it comes (no emulated delay): the link itself is measured.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from planner.schedule import CUT_MESSAGES
from trainer.backends.dist import torchrun_role
from trainer.comm.wire import DistTransport

REPEATS = 3


def main(sender: str, receiver: str, cuts: list[dict], out: Path) -> None:
    me, ranks = torchrun_role([sender, receiver])
    dist.init_process_group("gloo", init_method="env://", rank=ranks[me], world_size=2,
                            timeout=timedelta(seconds=120))
    peer = receiver if me == sender else sender
    t = DistTransport(me, ranks, [peer])
    rows = []
    for cut in cuts:
        per_sample = cut["batch_bytes"]  # one batch's output; a message carries samples x that
        msgs = [(m, torch.zeros(m.samples * per_sample, dtype=torch.uint8)) for m in CUT_MESSAGES]
        times = []
        for _ in range(1 + REPEATS):  # the first is a warm-up
            t0 = time.perf_counter()
            for m, x in msgs:
                forward = m.direction == "forward"
                if (me == sender) == forward:
                    t.send(me, peer, x, tag=m.tag)
                else:
                    t.recv(me, peer, tag=m.tag, timeout_s=120)
            times.append(time.perf_counter() - t0)
        rows.append({"layer": cut["layer"], "bytes": sum(x.numel() for _, x in msgs), "seconds": times[1:]})
    t.close(timeout_s=60)
    dist.destroy_process_group()
    if me == sender:
        out.write_text(json.dumps(rows))


if __name__ == "__main__":
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "eth0")
    main(sys.argv[1], sys.argv[2], json.loads(Path(sys.argv[3]).read_text()), Path(sys.argv[4]))
