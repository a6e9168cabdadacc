"""How bytes move between roles: the transport interface and its in-process and
``torch.distributed`` implementations (``transport``, ``wire``), emulated and virtual
links (``links``), link probing (``linkprobe``), cut codecs on the wire (``codecs``), the
tags a message may carry (``tags``) and what each may hold (``protocol``), the message
sequence of a round and a step, declared once (``sequence``) and checked against what the
transport records (``msgtrace``), and the plan-switch signal every role follows (``switch``).

Change this package to change how bytes move; it knows nothing of models or training."""

__all__ = ["transport", "wire", "protocol", "codecs", "switch", "linkprobe"]  # what the rest may import
