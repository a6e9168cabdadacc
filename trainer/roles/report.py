"""What a device tells the server after each round: named numbers, in the one serializer
for everything that is not a tensor (``trainer.state.pack``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch

from trainer import state


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
        return state.pack(asdict(self))

    @classmethod
    def from_tensor(cls, t: torch.Tensor, *, source: str) -> "DeviceReport":
        """The report in ``t``; ValueError naming ``source`` if it is not one (a field
        missing or extra, a value that is no number)."""
        values = state.unpack(t, source=source)
        names = [f.name for f in fields(cls)]
        if not isinstance(values, dict) or set(values) != set(names):
            raise ValueError(f"{source}: expected the fields {names}, found {sorted(values) if isinstance(values, dict) else type(values).__name__}")
        bad = [k for k in names if isinstance(values[k], bool) or not isinstance(values[k], (int, float))]
        if bad:
            raise ValueError(f"{source}: {bad[0]} is not a number: {values[bad[0]]!r}")
        return cls(**{k: float(values[k]) for k in names})
