"""The programs' building blocks: a device's training step (``device``), the server's generator
(``generator``), building either from the plan (``build``), a device's compute clock
(``clock``), the report a device sends after a round (``report``) and what every role says
about where it runs (``where``)."""

__all__ = ["build", "checkpoint", "clock", "device", "generator", "report", "where"]  # what the rest may import
