"""What a device tells the server after each round: a fixed row of float64 numbers."""

from __future__ import annotations

from dataclasses import astuple, dataclass, fields

import torch


@dataclass
class DeviceReport:
    """What a device tells the server after each round (sums over the round's steps)."""

    compute_s: float  # the device's compute time (emulated under --emulate sleep)
    codec_s: float  # encoding and decoding what crosses its cuts (emulated alike)
    work_s: float  # seconds of real work on this host
    host_wait_s: float  # waiting for this host's cores beyond what emulation hides
    wait_s: float  # waiting in recv for peers
    bytes_sent: float  # a step's messages (what the plan predicts)
    bytes_received: float
    control_bytes_sent: float  # everything else: aggregation, reports
    control_bytes_received: float
    steps_done: float
    chain_s: float  # data device: seconds from fake received to fake_grad sent

    def to_tensor(self) -> torch.Tensor:
        return torch.tensor(astuple(self), dtype=torch.float64)

    @classmethod
    def from_tensor(cls, t: torch.Tensor) -> "DeviceReport":
        values = t.tolist()
        if len(values) != len(fields(cls)):
            raise ValueError(f"a report has {len(fields(cls))} values, found {len(values)}")
        return cls(*values)
