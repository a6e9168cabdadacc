"""A run from start to end: ``train(cfg)`` (``train``), each role's whole run (``loop`` for
devices, ``serve`` for the server), the run folder (``rundir``), metrics (``metrics``),
plots (``plots``), sample grids (``images``), TensorBoard (``board``), the run file
(``runfile``: ``--config``, ``DIR/config.toml``) and a finished run read back (``runfiles``,
``htmlreport``: ``fsl report``)."""

__all__ = ["train", "loop", "rundir", "images", "runfile", "runfiles", "htmlreport"]  # what the rest may import
