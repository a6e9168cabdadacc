"""How bytes move between roles: the transport interface and its in-process and
``torch.distributed`` implementations (``transport``, ``wire``), emulated links (``links``),
link probing (``linkprobe``), cut codecs on the wire (``codecs``), what each message tag may
carry (``protocol``) and the plan-switch signal every role follows (``switch``).

Change this package to change how bytes move; it knows nothing of models or training."""

__all__ = ["transport", "wire", "protocol", "codecs", "switch", "linkprobe"]  # what the rest may import
