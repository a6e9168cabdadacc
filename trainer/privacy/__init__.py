"""What protects a client's records: DP-SGD for a split discriminator (``dpsgd``), its
accountant and ledger (``accountant``, ``dprun``), cut noise and the secure random source
(``options``), and the interpreter-level record of which files each role opened (``opened``)."""

__all__ = ["accountant", "dprun", "dpsgd", "opened", "options"]  # what the rest may import
