"""Build the roles a plan asks for: the server's generator, each device's segment.

The plan is checked against the model first (SPEC §2-3): the model must exist, its
fingerprint and planning units must match, and the data must fit its input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from planner.errors import InputError
from planner.models import DISCRIMINATORS, Generator, LayeredModel, SeededDropout, build_discriminator
from planner.planfile import Plan
from trainer.config import TrainConfig
from trainer.data import Dataset, ShardSampler, shard_dirichlet, shard_iid
from trainer.roles import ClientView, Clock, DeviceRole, ServerRole

ADAM_BETAS = (0.5, 0.999)  # DCGAN's


@dataclass
class Federation:
    plan: Plan
    server: ServerRole
    devices: dict[str, DeviceRole]  # by device name, every planned device
    discriminators: dict[str, LayeredModel]  # by client name (stages share its modules)
    chains: dict[str, list[str]]  # client -> device names, data device first
    shard_sizes: dict[str, int]
    warnings: list[str]  # things a person should know before trusting the timings


def unit_layers(plan: Plan, model: LayeredModel, source: str) -> list[tuple[int, int]]:
    """Model layer range ``[first, end)`` of each planning unit, checked against the model."""
    spans, expect = [], 0
    for i, layer in enumerate(plan.model["layers"]):
        span = layer.get("model_layers", [i, i + 1])
        if not (isinstance(span, list) and len(span) == 2 and span[0] == expect and span[1] > span[0]):
            raise InputError(source, f"model.layers[{i}].model_layers",
                             f"expected [{expect}, >{expect}], found {span!r}")
        spans.append((span[0], span[1]))
        expect = span[1]
    if expect != len(model):
        raise InputError(source, "model.layers", f"plan covers {expect} layers, model {model.model_name} has {len(model)}")
    return spans


def check_plan_model(plan: Plan, source: str) -> tuple[LayeredModel, list[tuple[int, int]]]:
    """The plan's model, built fresh, and each planning unit's layer span; InputError if they disagree."""
    name = plan.model["name"]
    if name not in DISCRIMINATORS:
        raise InputError(source, "model.name", f"unknown model {name!r}, expected one of {', '.join(DISCRIMINATORS)}")
    model = build_discriminator(name)
    if plan.model["fingerprint"] != model.fingerprint():
        raise InputError(source, "model.fingerprint", f"does not match model {name} of this version "
                         f"({plan.model['fingerprint'][:19]}… vs {model.fingerprint()[:19]}…); plan again")
    if list(plan.model["input_shape"]) != list(model.input_shape):
        raise InputError(source, "model.input_shape", f"expected {list(model.input_shape)}")
    return model, unit_layers(plan, model, source)


def fit_images(images: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Resize [N,1,28,28] images to the model's input (e.g. 64x64)."""
    if tuple(images.shape[1:]) == tuple(shape):
        return images
    return F.interpolate(images, size=shape[1:], mode="bilinear", align_corners=False).clamp(-1, 1)


def _adam(module: torch.nn.Module, lr: float) -> torch.optim.Optimizer | None:
    """Adam over the module's parameters; None for a stage without any (e.g. activations)."""
    params = list(module.parameters())
    return torch.optim.Adam(params, lr=lr, betas=ADAM_BETAS) if params else None


def _reseed_dropout(model: LayeredModel, seed: int) -> None:
    for i, layer in enumerate(model.layers):
        if isinstance(layer, SeededDropout):
            layer.reseed(seed * 1009 + i)


def build_federation(plan: Plan, cfg: TrainConfig, dataset: Dataset, *, lock=None) -> Federation:
    source = str(cfg.plan_path)
    template, spans = check_plan_model(plan, source)
    planned = plan.planned
    images = fit_images(dataset.images, template.input_shape)
    weights = [c.data_weight for c in planned]
    if cfg.alpha is None:
        shards = shard_iid(len(images), weights, seed=cfg.seed)
    else:
        shards = shard_dirichlet(dataset.labels, weights, alpha=cfg.alpha, seed=cfg.seed)
    emulate = cfg.emulate == "sleep"
    B = plan.batch_size
    devices, discs, chains, views = {}, {}, {}, []
    for ci, c in enumerate(planned):
        torch.manual_seed(cfg.seed + 1)  # every client starts from the same discriminator
        d = build_discriminator(plan.model["name"])
        _reseed_dropout(d, cfg.seed * 7919 + ci)
        d.train()
        discs[c.name] = d
        chain = [s.device for s in c.stages]
        chains[c.name] = chain
        for si, st in enumerate(c.stages):
            seg = d.segment(spans[st.start][0], spans[st.end - 1][1])
            devices[st.device] = DeviceRole(
                name=st.device, client=c.name, stage=seg,
                optimizer=_adam(seg, cfg.lr),
                prev=chain[si - 1] if si > 0 else None,
                next=chain[si + 1] if si + 1 < len(chain) else None,
                batch_size=B,
                sampler=ShardSampler(images[torch.as_tensor(shards[ci])], batch_size=B, seed=cfg.seed * 31 + ci)
                if si == 0 else None,
                clock=Clock(factor=c.processing_time_factor.get(st.device, 1.0), emulate=emulate, lock=lock),
                timeout_s=cfg.timeout_s,
            )
        views.append(ClientView(c.name, chain[0], chain[-1], c.data_weight))
    torch.manual_seed(cfg.seed)
    g = Generator(image_size=template.input_shape[-1])
    g.train()
    server = ServerRole(
        generator=g, optimizer=_adam(g, cfg.lr),
        clients=views, batch_size=B, z_generator=torch.Generator().manual_seed(cfg.seed + 12345),
        deadline_s=cfg.deadline_s, timeout_s=cfg.timeout_s, clock=Clock(lock=lock),
    )
    fast = sorted(n for c in planned for n, f in c.processing_time_factor.items() if f < 1 and n in devices)
    warnings = []
    if emulate and fast:
        warnings.append(f"{', '.join(fast)} should run faster than this machine (processing_time_factor < 1); "
                        "emulation can only slow a device down, so they run at this machine's speed")
    return Federation(plan=plan, server=server, devices=devices, discriminators=discs, chains=chains,
                      shard_sizes={c.name: len(s) for c, s in zip(planned, shards)}, warnings=warnings)
