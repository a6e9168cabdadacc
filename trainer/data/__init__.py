"""Training data and who may hold it: data sets (``datasets``: digits, MNIST IDX files via
``idx``, image folders via ``folders``) and per-client shards and batch samplers (``shards``)."""

__all__ = ["datasets", "shards", "folders"]  # what the rest may import
