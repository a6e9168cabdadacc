"""A run from start to end: ``train(cfg)`` (``train``), each role's whole run (``loop`` for
devices, ``serve`` for the server), the run folder (``rundir``), metrics (``metrics``),
plots (``plots``) and sample grids (``images``)."""

__all__ = ["train", "loop", "rundir", "images"]  # what the rest may import
