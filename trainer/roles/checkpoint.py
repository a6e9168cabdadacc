"""A device's part of a checkpoint (``trainer.state``): its segment's weights, Adam state
per parameter name, dropout streams and sampler, and a client's file put together from its
devices' parts or cut back into them for a (possibly re-planned) chain of stages."""

from __future__ import annotations

from planner.errors import InputError
from planner.models import LayeredModel, SeededDropout
from trainer.roles.device import DeviceRole
from trainer.state import CLIENT_FORMAT, plan_digest


def _layer(key: str) -> int:
    return int(key.split(".")[1])  # "layers.<i>.<param>"


def adam_by_name(role: DeviceRole) -> dict[str, dict]:
    """The stage's Adam state per parameter name (``layers.<i>.<param>``): portable to any
    stage that later holds that layer."""
    if role.optimizer is None:
        return {}
    names = [n for n, _ in role.stage.named_parameters()]
    by_index = role.optimizer.state_dict()["state"]
    return {names[i]: v for i, v in by_index.items()}


def load_adam_by_name(role: DeviceRole, per_name: dict[str, dict]) -> None:
    if role.optimizer is None or not per_name:
        return
    sd = role.optimizer.state_dict()
    names = [n for n, _ in role.stage.named_parameters()]
    sd["state"] = {i: per_name[n] for i, n in enumerate(names) if n in per_name}
    role.optimizer.load_state_dict(sd)


def device_state(role: DeviceRole, model: LayeredModel) -> dict:
    """Everything of one device that a checkpoint holds."""
    seg = role.stage
    return {"span": [seg.start, seg.end], "weights": seg.state_dict(), "adam": adam_by_name(role),
            "dropout": {str(i): model.layers[i].generator.get_state() for i in range(seg.start, seg.end)
                        if isinstance(model.layers[i], SeededDropout)},
            "sampler": role.sampler.state_dict() if role.sampler is not None else {}}


def load_device_state(role: DeviceRole, model: LayeredModel, state: dict, *, source: str) -> None:
    seg = role.stage
    try:
        seg.load_state_dict(state["weights"])
        load_adam_by_name(role, state["adam"])
        for i, s in state["dropout"].items():
            model.layers[int(i)].generator.set_state(s)
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise InputError(source, None, f"does not match this run ({type(e).__name__}: {str(e)[:120]})") from None
    if role.sampler is not None:
        role.sampler.load_state_dict(state.get("sampler", {}), source=source)


def client_checkpoint(client: str, *, round_done: int, plan, states: dict[str, dict]) -> dict:
    """A client's file: its devices' states (``device -> device_state``) put together."""
    weights, adam, dropout = {}, {}, {}
    for s in states.values():
        weights.update(s["weights"])
        adam.update(s["adam"])
        dropout.update(s["dropout"])
    sampler = next(s["sampler"] for s in states.values() if s["sampler"])
    return {"format": CLIENT_FORMAT, "round": round_done, "plan": plan_digest(plan), "client": client,
            "weights": weights, "adam": adam, "dropout": dropout, "sampler": sampler}


def device_states(ck: dict, chain: list[tuple[str, int, int]], *, source: str) -> dict[str, dict]:
    """Each device's state for the (possibly re-planned) ``chain`` of ``(device, start, end)``
    model-layer spans, from a client's file."""
    out = {}
    try:
        for i, (name, a, b) in enumerate(chain):
            out[name] = {
                "span": [a, b], "weights": {k: v for k, v in ck["weights"].items() if a <= _layer(k) < b},
                "adam": {k: v for k, v in ck["adam"].items() if a <= _layer(k) < b},
                "dropout": {k: v for k, v in ck["dropout"].items() if a <= int(k) < b},
                "sampler": ck["sampler"] if i == 0 else {}}
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise InputError(source, None, f"does not match this run ({type(e).__name__}: {str(e)[:120]})") from None
    return out
