"""Build one role of a run from the plan: the server's generator, or one device's segment.

Each role builds only its own part. The plan is checked against the model first (SPEC
§2-3): the model must exist, its fingerprint, planning units and per-sample sizes must
match the plan's tables, and the batch size must be sane. A data device loads its own
client's shard and nothing else (``trainer.data.datasets.DataSource``).
"""

from __future__ import annotations

import copy
import math
import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from planner.errors import InputError
from planner.models import LayeredModel, SeededDropout
from planner.planfile import Plan, PlannedClient
from planner.planschema import MAX_BATCH
from planner.schedule import cut_bytes_per_step
from planner.usermodel import UserModel, build_model, generator_for
from trainer.roles.clock import Clock
from trainer.config import TrainConfig
from trainer.data.datasets import DataSource, Dataset
from trainer.roles.device import DeviceRole
from trainer.privacy.dpsgd import DeviceDP
from trainer.privacy.options import Privacy
from trainer.roles.generator import ClientView, ServerRole
from trainer.data.shards import PoissonSampler, ShardSampler
from trainer.comm.transport import SERVER

ADAM_BETAS = (0.5, 0.999)  # DCGAN's
_SEEDED = threading.Lock()  # roles of the local backend build in parallel threads; torch's RNG is global


@dataclass(frozen=True)
class RunSpec:
    """Everything a role needs to play its part: the options and the plan."""

    cfg: TrainConfig
    plan: Plan

    @property
    def source(self) -> str:
        return str(self.cfg.plan_path)

    @property
    def data(self) -> DataSource:
        c = self.cfg
        return DataSource.of(c.data, None if c.data_root is None else str(c.data_root), c.alpha, c.seed,
                             tuple(self.plan.model["input_shape"]))

    def roles(self) -> list[str]:
        """The server, then every planned device in plan order."""
        return [SERVER] + [s.device for c in self.plan.planned for s in c.stages]

    def client_of(self, device: str) -> tuple[int, PlannedClient]:
        for k, c in enumerate(self.plan.planned):
            if device in {s.device for s in c.stages}:
                return k, c
        raise KeyError(device)


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
    """The plan's model, built fresh, and each planning unit's layer span; InputError if
    they disagree (model, fingerprint, input shape, batch size, the tables' sizes)."""
    name = plan.model["name"]
    if not 1 <= plan.batch_size <= MAX_BATCH:
        raise InputError(source, "batch_size", f"must be within 1..{MAX_BATCH}, found {plan.batch_size}")
    with _SEEDED:
        model = build_model(name, source=source, field="model.name")
    if plan.model["fingerprint"] != model.fingerprint():
        raise InputError(source, "model.fingerprint", f"does not match model {name}: {_what_changed(plan, model)} "
                         f"({plan.model['fingerprint'][:19]}… vs {model.fingerprint()[:19]}…); plan again")
    if list(plan.model["input_shape"]) != list(model.input_shape):
        raise InputError(source, "model.input_shape", f"expected {list(model.input_shape)}")
    if len(model.input_shape) != 3 or model.input_shape[0] not in (1, 3):
        raise InputError(source, "model.input_shape", f"{list(model.input_shape)}: training needs images "
                         "(C, H, W) with C 1 (grayscale) or 3 (RGB)")
    if isinstance(model, UserModel) and not model.has_generator:
        raise InputError(source, "model.name", f"{name} returns no generator to train: the factory returns one "
                         "as 'generator' with its 'z_dim' (docs/own-data.md)")
    spans = unit_layers(plan, model, source)
    _check_sizes(plan, model, spans, source)
    return model, spans


_CHECKED: list = [None]  # (plan, model, spans, shapes) of the last plan checked: every role of a run checks once


def checked_plan(spec: RunSpec) -> tuple[LayeredModel, list[tuple[int, int]], list[tuple[int, ...]]]:
    """:func:`check_plan_model` and :func:`unit_shapes` of ``spec``'s plan, computed once
    for the last plan seen in this process (400 device threads of one run would each build
    the model and run it)."""
    hit = _CHECKED[0]
    if hit is None or hit[0] is not spec.plan:
        model, spans = check_plan_model(spec.plan, spec.source)
        hit = _CHECKED[0] = (spec.plan, model, spans, unit_shapes(model, spans))
    return hit[1], hit[2], hit[3]


def unit_shapes(model: LayeredModel, spans: list[tuple[int, int]]) -> list[tuple[int, ...]]:
    """Per sample, the shape of each planning unit's output (float32)."""
    with torch.no_grad():
        x, out = torch.zeros(1, *model.input_shape), []
        for a, b in spans:
            x = model.run(x, a, b)
            out.append(tuple(x.shape[1:]))
    return out


def _check_sizes(plan: Plan, model: LayeredModel, spans: list[tuple[int, int]], source: str) -> None:
    """Each unit's output bytes in the plan must be ``batch_size`` x what the model
    produces per sample: a plan whose batch size or tables were edited is refused here,
    before anything is allocated."""
    outs = [4 * math.prod(shape) for shape in unit_shapes(model, spans)]
    for i, (layer, per_sample) in enumerate(zip(plan.model["layers"], outs)):
        want = per_sample * plan.batch_size
        if layer["output_bytes"] != want:
            raise InputError(source, f"model.layers[{i}].output_bytes", f"{layer['output_bytes']} bytes does not match "
                             f"batch_size {plan.batch_size} x {per_sample} bytes per sample ({want})")
    for ci, c in enumerate(plan.clients):
        for l, n in enumerate(c.costs.cut_bytes):
            if n != cut_bytes_per_step(plan.model["layers"][l]["output_bytes"]):
                raise InputError(source, f"clients[{ci}].costs.cut_bytes[{l}]", f"{n} bytes, but a step moves "
                                 f"{cut_bytes_per_step(plan.model['layers'][l]['output_bytes'])} across that cut "
                                 "(planner.schedule)")


def _what_changed(plan: Plan, model: LayeredModel) -> str:
    if not isinstance(model, UserModel):
        return "this version has another architecture"
    recorded = plan.model.get("source")
    planned = recorded.get("sha256") if isinstance(recorded, dict) else None
    if planned != model.source["sha256"]:
        return f"its file changed since planning (sha256 {str(planned)[:12]}… vs {str(model.source['sha256'])[:12]}…)"
    return "the factory builds another architecture now, or another version of fsl-gan made the plan"


def fit_images(images: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Images [N, C, H, W] as the model's input: resized (e.g. 28x28 digits to 64x64), and
    grayscale repeated into RGB where the model takes 3 channels."""
    if tuple(images.shape[1:]) == tuple(shape):
        return images
    if images.shape[1] == 1 and shape[0] == 3:
        images = images.expand(-1, 3, -1, -1)
    if tuple(images.shape[2:]) != tuple(shape[1:]):
        images = F.interpolate(images, size=shape[1:], mode="bilinear", align_corners=False).clamp(-1, 1)
    return images.contiguous()


def adam(module: torch.nn.Module, lr: float) -> torch.optim.Optimizer | None:
    """Adam over the module's parameters; None for a stage without any (e.g. activations)."""
    params = list(module.parameters())
    return torch.optim.Adam(params, lr=lr, betas=ADAM_BETAS) if params else None


def client_discriminator(spec: RunSpec, k: int) -> LayeredModel:
    """Client ``k``'s discriminator as it starts: every client from the same weights,
    its own dropout streams."""
    with _SEEDED:
        torch.manual_seed(spec.cfg.seed + 1)
        d = build_model(spec.plan.model["name"], source=spec.source, field="model.name")
    for i, layer in enumerate(d.layers):
        if isinstance(layer, SeededDropout):
            layer.reseed((spec.cfg.seed * 7919 + k) * 1009 + i)
    return d.train()


@dataclass
class DeviceParts:
    role: DeviceRole
    model: LayeredModel  # the client's discriminator; the role's segment shares its layers
    data: Dataset | None  # the data device's training data; None elsewhere
    chain: list[tuple[str, int, int]]  # the client's devices, data device first, with model-layer spans


def build_device(spec: RunSpec, name: str, *, lock: threading.Lock | None = None) -> DeviceParts:
    """Device ``name``'s role and what comes with it (see :class:`DeviceParts`)."""
    cfg, plan = spec.cfg, spec.plan
    template, spans, shapes = checked_plan(spec)
    k, c = spec.client_of(name)
    chain = [s.device for s in c.stages]
    i = chain.index(name)
    st = c.stages[i]
    d = client_discriminator(spec, k)
    seg = d.segment(spans[st.start][0], spans[st.end - 1][1])
    data, sampler = None, None
    privacy = Privacy(cut_noise=cfg.cut_noise if i == 0 else 0.0)
    if i == 0:
        data = spec.data.client_data([x.data_weight for x in plan.planned], k, c.name)
        images = fit_images(data.images, template.input_shape)
        if cfg.dp and len(images) < plan.batch_size:
            raise InputError("--dp-epsilon" if cfg.dp_epsilon else "--dp-noise", None, f"client {c.name} holds "
                             f"{len(images)} records, fewer than a batch of {plan.batch_size}: the sampling rate "
                             "B / N would exceed 1")
        sampler = (PoissonSampler(images, batch_size=plan.batch_size, random=privacy.random) if cfg.dp else
                   ShardSampler(images, batch_size=plan.batch_size, seed=cfg.seed * 31 + k))
    dp = DeviceDP(seg, clip=cfg.clip, batch_size=plan.batch_size, head=chain[0], peers=tuple(chain[1:]) if i == 0 else (),
                  normal=privacy.random.normal) if cfg.dp else None
    role = DeviceRole(
        name=name, client=c.name, stage=seg, optimizer=adam(seg, cfg.lr),
        prev=chain[i - 1] if i > 0 else None, next=chain[i + 1] if i + 1 < len(chain) else None,
        batch_size=plan.batch_size, sampler=sampler,
        clock=Clock(factor=c.processing_time_factor.get(name, 1.0), emulate=cfg.emulate == "sleep",
                    virtual=cfg.emulate == "virtual", lock=lock),
        timeout_s=cfg.timeout_s, micro_batches=c.micro_batches, recompute=st.recompute,
        codec_in=c.stages[i - 1].codec if i > 0 else "none", codec_out=st.codec,
        input_shape=shapes[st.start - 1] if st.start > 0 else tuple(template.input_shape),
        privacy=privacy, dp=dp)
    spans_of = [(s.device, spans[s.start][0], spans[s.end - 1][1]) for s in c.stages]
    return DeviceParts(role, d, data, spans_of)


def build_server(spec: RunSpec, *, lock: threading.Lock | None = None) -> ServerRole:
    cfg, plan = spec.cfg, spec.plan
    template, _ = check_plan_model(plan, spec.source)
    with _SEEDED:
        torch.manual_seed(cfg.seed)
        g = generator_for(template)
    views = [ClientView(c.name, tuple(s.device for s in c.stages), c.data_weight) for c in plan.planned]
    return ServerRole(
        generator=g.train(), optimizer=adam(g, cfg.lr), clients=views, batch_size=plan.batch_size,
        z_generator=torch.Generator().manual_seed(cfg.seed + 12345), deadline_s=cfg.deadline_s,
        timeout_s=cfg.timeout_s, feedback=cfg.feedback, clock=Clock(lock=lock, virtual=cfg.emulate == "virtual"),
        ema=copy.deepcopy(g).train().requires_grad_(False) if cfg.g_ema else None, ema_decay=cfg.g_ema)


def emulation_warnings(plan: Plan, cfg: TrainConfig) -> list[str]:
    """Things a person should know before trusting the timings."""
    fast = sorted(s.device for c in plan.planned for s in c.stages if c.processing_time_factor.get(s.device, 1) < 1)
    if cfg.emulate != "sleep" or not fast:
        return []
    return [f"{', '.join(fast)} should run faster than this machine (processing_time_factor < 1); "
            "emulation can only slow a device down, so they run at this machine's speed"]
