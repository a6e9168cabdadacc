"""The layer graph: nodes are layers with their costs, edges carry the bytes they move.

A cut after layer ``l`` splits the graph into layers ``0..l`` and ``l+1..L-1``. It is
legal only when a single tensor carries everything forward: every edge that crosses it
leaves layer ``l`` itself. On a chain every cut is legal; inside a residual block the
skip edge also crosses, so the cut is not.
"""

from __future__ import annotations

import networkx as nx

from planner.models import LayeredModel
from planner.profile import ModelProfile

INPUT = "input"


def build_graph(model: LayeredModel, profile: ModelProfile | None = None) -> nx.DiGraph:
    """Nodes ``0..L-1`` (plus ``"input"``) with profile costs; edges carry ``bytes``.

    Edge bytes are the producer's output for one batch (``LayerProfile.output_bytes``)
    when a profile is given, else 0.
    """
    g = nx.DiGraph()
    g.add_node(INPUT, name=INPUT)
    for i, node in enumerate(model.nodes):
        attrs = {"name": node.name}
        if profile is not None:
            lp = profile.layers[i]
            attrs.update(flops=lp.flops, params=lp.params, memory_bytes=lp.memory_bytes, time_s=lp.time_s)
        g.add_node(i, **attrs)
        for j in node.inputs:
            src = INPUT if j == -1 else j
            nbytes = 0
            if profile is not None and j >= 0:
                nbytes = profile.layers[j].output_bytes
            g.add_edge(src, i, bytes=nbytes)
    return g


def legal_cuts(g: nx.DiGraph) -> list[int]:
    """Layers ``l`` after which the model may be cut (``l`` in ``0..L-2``)."""
    layers = sorted(n for n in g.nodes if n != INPUT)
    out = []
    for cut in layers[:-1]:
        crossing = [(u, v) for u, v in g.edges if u != INPUT and u <= cut < v]
        crossing += [(u, v) for u, v in g.edges if u == INPUT and v > cut]
        if all(u == cut for u, _ in crossing):
            out.append(cut)
    return out
