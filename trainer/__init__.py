"""The trainer: executes a plan (SPEC §3, ``fsl train``). ``train(cfg)`` is the one entry;
``trainer.run.loop`` holds the round loop both backends run."""

from trainer.config import TrainConfig
from trainer.errors import DeviceFailure
from trainer.run.train import train

__all__ = ["TrainConfig", "DeviceFailure", "train"]
