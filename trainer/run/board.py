"""Each round of a run in TensorBoard (``--tensorboard``): ``DIR/tensorboard/``, written
with ``torch.utils.tensorboard.SummaryWriter`` by the server as the round ends, from the
round's row of ``metrics.jsonl`` and its sample grid. Step = round. Watch it live with
``tensorboard --logdir DIR/tensorboard``.

Tags (per round; a value a round does not have is not written):

| tag | metrics.jsonl |
| --- | --- |
| ``loss/generator`` | ``g_loss`` |
| ``loss/discriminator/<client>`` | ``d_loss[client]`` (``loss/discriminator_fake/`` under DP: ``d_loss_fake``) |
| ``quality/<key>`` | each number the evaluation adds: ``fid``, ``kid``, ``kid_std``, ``confidence``, ... |
| ``round/time_s``, ``round/predicted_time_s`` | ``round_time_s``, ``predicted_round_time_s`` |
| ``client/<name>/step_time_s``, ``.../predicted_step_time_s`` | ``clients[name]``'s measured and planned step |
| ``client/<name>/epsilon`` | ``clients[name].epsilon`` (DP-SGD) |
| ``device/<name>/compute_s``, ``.../predicted_compute_s`` | ``devices[name]``: compute per step, measured and planned |
| ``samples`` (image) | ``samples/round_NNNN.png`` |
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

BOARD_DIR = "tensorboard"
ROUND_KEYS = {"round_time_s": "round/time_s", "predicted_round_time_s": "round/predicted_time_s"}
NOT_QUALITY = {"round", "g_loss", *ROUND_KEYS}
CLIENT_KEYS = ("step_time_s", "predicted_step_time_s", "epsilon")
DEVICE_KEYS = ("compute_s", "predicted_compute_s")


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def round_scalars(row: dict) -> dict[str, float]:
    """Tag -> value for one row of metrics.jsonl (see the table above)."""
    out = {}
    if _number(row.get("g_loss")):
        out["loss/generator"] = row["g_loss"]
    for key, tag in (("d_loss", "discriminator"), ("d_loss_fake", "discriminator_fake")):
        out |= {f"loss/{tag}/{c}": v for c, v in (row.get(key) or {}).items() if _number(v)}
    out |= {tag: row[k] for k, tag in ROUND_KEYS.items() if _number(row.get(k))}
    out |= {f"quality/{k}": v for k, v in row.items() if k not in NOT_QUALITY and _number(v)}
    for group, names in (("clients", CLIENT_KEYS), ("devices", DEVICE_KEYS)):
        for name, values in (row.get(group) or {}).items():
            out |= {f"{group[:-1]}/{name}/{k}": values[k] for k in names if _number(values.get(k))}
    return out


class Board:
    """A SummaryWriter on ``out/tensorboard``. ``first_round``: the round this start writes
    first; on a resume TensorBoard hides what an earlier start wrote from it on (a round
    written before a crash and trained again)."""

    def __init__(self, out: str | Path, *, first_round: int, config_text: str | None = None):
        from torch.utils.tensorboard import SummaryWriter  # only when asked: it loads tensorboard

        self.writer = SummaryWriter(log_dir=str(Path(out) / BOARD_DIR), purge_step=first_round)
        if config_text:
            self.writer.add_text("config", f"```\n{config_text}\n```", global_step=first_round)

    def add_round(self, row: dict, grid: Path) -> None:
        step = row["round"]
        for tag, value in round_scalars(row).items():
            self.writer.add_scalar(tag, value, global_step=step)
        with Image.open(grid) as im:
            pixels = np.asarray(im.convert("RGB"))
        self.writer.add_image("samples", pixels, global_step=step, dataformats="HWC")
        self.writer.flush()  # a round is on disk when it ends: TensorBoard shows it live

    def close(self) -> None:
        self.writer.close()
