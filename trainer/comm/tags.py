"""Every tag a message between roles may carry: a step's planned messages
(``planner.schedule``, which the planner counts bytes for), DP-SGD's unplanned step
messages, and the control messages around the steps. ``trainer.comm.protocol`` gives each
its rule; a tag not listed here is refused on the wire."""

from __future__ import annotations

from planner.schedule import PLANNED_TAGS

STEP_TAGS = PLANNED_TAGS  # planner.schedule: the step's messages, planned and link-delayed
CONTROL_TAGS = frozenset([
    "stop",  # server -> a dropped client's devices: the round's steps are over for you
    "hello",  # role -> server, once: what this process holds (processes.json)
    "start",  # server -> role, once: the round to start after
    "round",  # server -> role: start round r (0: the run ends here, a new plan follows)
    "plan",  # server -> role, after round [0] (--adapt): the new plan's JSON file (trainer.comm.switch)
    "report",  # device -> server, each round: compute, bytes, waits
    "trace",  # device -> server, last round: timestamps of the last step (timeline.png)
    "state",  # checkpoint state: device -> its data device, or data device -> device on resume
    "saved",  # data device -> server: the client's checkpoint of this round is on disk
    "weights",  # aggregation: a segment's parameters to the server and back
    "secagg",  # --secure-agg: each round's public keys and sealed key shares via the server; a data
    #            device's shares of self masks and of the keys of devices whose weights did not arrive
    "bye",  # closing a connection
    "calib",  # fsl calibrate: the server's orders to a device, and what it measured
    "probe",  # fsl calibrate: a link probe's payload (trainer.comm.linkprobe)
    "probe_ack",  # fsl calibrate: its acknowledgement
    "dp_sigma",  # DP-SGD, once: the data device's noise multiplier to its client's other devices
    "dp_norms",  # DP-SGD, each step: a device's per-sample squared gradient norms to its data device
    "dp_scale",  # DP-SGD, each step: the data device's per-sample clip factors back
    "ledger",  # DP-SGD, each round: the data device's privacy ledger summary to the server
])
# Messages of one step that are not planned (no link delay, counted as control bytes) but,
# like the step's own, are dropped unread when their receiver was stopped mid-step: DP-SGD's.
UNPLANNED_STEP_TAGS = frozenset(["dp_norms", "dp_scale"])
TAGS = tuple(sorted(STEP_TAGS)) + tuple(sorted(CONTROL_TAGS))
