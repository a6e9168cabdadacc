"""Models by reference: a built-in name, or a factory in the user's own code.

``--model`` (``fsl profile``, ``fsl plan``, ``fsl calibrate``) takes one of

- ``dcgan``, ``dcgan64``, ``resnet``: the built-in discriminators (``planner.models``),
  paired with the seed's DCGAN generator at their image size;
- ``path/to/file.py:factory``: that file, executed as a module of its own (its folder
  is not put on Python's path, so nothing beside it is imported by accident);
- ``module.path:factory``: imported from Python's path as it is (installed packages,
  ``PYTHONPATH``); the current folder is not added.

The factory takes no arguments and returns a dict (the *factory contract*)::

    {"discriminator": nn.Sequential(...),  # or a planner.models.LayeredModel; its
                                           # children in order are the layers a plan cuts
     "input_shape": (3, 64, 64),           # (C, H, W) of one image; C 1 (grayscale) or 3
                                           # (RGB) to train; not needed for a LayeredModel
     "generator": nn.Module,               # z [N, z_dim] -> images [N, C, H, W] in [-1, 1]
     "z_dim": 100}                         # the noise size (or a z_dim attribute of the generator)

The discriminator returns one logit per image, ``[N, 1]`` (the loss is BCE with logits).
``generator`` and ``z_dim`` may be left out to profile and plan; training needs them.
Weights come from torch's global random state: the trainer seeds it before each call,
so every client starts from the same weights (use ``planner.models.SeededDropout`` for
dropout that does not depend on thread timing).

A plan records the reference as ``model.name``, the file's sha256 as ``model.source``
and a fingerprint of that sha256 and both networks' architectures (layer reprs,
parameter shapes, ``z_dim``; not weights). ``fsl train`` builds the model again from the
plan's reference and refuses a fingerprint that differs: any edit of the named file
means planning again, since a custom module's ``forward`` can change what a layer costs
without changing its repr. For ``module.path:factory`` the sha256 is that of the
module's own file (a package's ``__init__.py``), not of everything it imports. Executing the named code is the user's
own trust decision (SECURITY.md).
"""

from __future__ import annotations

import hashlib
import importlib
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from planner.errors import InputError
from planner.models import DISCRIMINATORS, Generator, LayeredModel, build_discriminator

CONTRACT_KEYS = ("discriminator", "input_shape", "generator", "z_dim")
BUILTIN_GENERATOR_SHAPES = ((1, 28, 28), (1, 64, 64))  # the sizes planner.models.Generator draws
_PROBE = 2  # images in the dry runs that check a factory's shapes
_LOADED: dict[tuple[str, str], ModuleType] = {}  # (resolved file, sha256) -> its module
_LOADING = threading.Lock()  # roles of the local backend build in parallel threads


@dataclass(frozen=True)
class Reference:
    """A ``--model`` value that names user code."""

    text: str  # as written, e.g. "examples/dcgan_rgb.py:build"
    target: str  # the file ("examples/dcgan_rgb.py") or module ("mypkg.models")
    factory: str  # the function's name in it
    is_file: bool


def parse_reference(text: str, *, source: str = "--model", field: str | None = None) -> Reference | None:
    """The reference ``text`` names; None for a built-in name (checked here too)."""
    if ":" not in text:
        if text not in DISCRIMINATORS:
            raise InputError(source, field, f"unknown model {text!r}, expected one of {', '.join(DISCRIMINATORS)}, "
                             "module.path:factory or path/to/file.py:factory")
        return None
    target, factory = text.rsplit(":", 1)
    if not target or not factory.isidentifier():
        raise InputError(source, field, f"{text!r}: expected module.path:factory or path/to/file.py:factory "
                         "(factory a Python name)")
    is_file = target.endswith(".py") or "/" in target or "\\" in target
    return Reference(text, target, factory, is_file)


def _load_file(ref: Reference, source: str, field: str | None) -> tuple[ModuleType, str]:
    """The module of ``ref``'s file and the file's sha256; the bytes hashed are the bytes
    executed, and a file is executed once per content per process."""
    path = Path(ref.target)
    try:
        code = path.read_bytes()
    except OSError as e:
        raise InputError(source, field, f"{ref.text}: cannot read {path} ({e.strerror or e}); relative paths "
                         "are read from the current folder") from None
    digest = hashlib.sha256(code).hexdigest()
    key = (str(path.resolve()), digest)
    with _LOADING:
        if key not in _LOADED:
            name = f"fsl_user_model_{digest[:16]}"
            module = ModuleType(name)
            module.__file__ = str(path)
            sys.modules[name] = module  # dataclasses and pickling look their module up here
            try:
                exec(compile(code, str(path), "exec"), module.__dict__)  # noqa: S102 - the file the user named
            except Exception as e:  # noqa: BLE001 - any error in user code is an input error
                del sys.modules[name]
                raise InputError(source, field, f"{ref.text}: executing {path} failed: {_one_line(e)}") from None
            _LOADED[key] = module
    return _LOADED[key], digest


def _load_module(ref: Reference, source: str, field: str | None) -> tuple[ModuleType, str | None]:
    try:
        module = importlib.import_module(ref.target)
    except ModuleNotFoundError as e:
        if e.name and ref.target.startswith(e.name):
            raise InputError(source, field, f"{ref.text}: no module {e.name!r} on Python's path (for a file, "
                             "write path/to/file.py:factory)") from None
        raise InputError(source, field, f"{ref.text}: importing {ref.target} failed: {_one_line(e)}") from None
    except Exception as e:  # noqa: BLE001
        raise InputError(source, field, f"{ref.text}: importing {ref.target} failed: {_one_line(e)}") from None
    origin = getattr(module, "__file__", None)
    digest = hashlib.sha256(Path(origin).read_bytes()).hexdigest() if origin and Path(origin).is_file() else None
    return module, digest


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"


class UserModel(LayeredModel):
    """A discriminator from a user factory, with what the trainer needs besides it: its
    generator (built by calling the factory again) and where it came from."""

    def __init__(self, name: str, input_shape: Sequence[int], layers: Sequence[tuple], *,
                 generator_signature: str, source: dict, make_generator: Callable[[], nn.Module | None]):
        super().__init__(name, input_shape, layers)
        self.generator_signature = generator_signature  # the generator's architecture, or "none"
        self.source = source  # {"sha256": ...} of the file that defines the factory
        self.make_generator = make_generator

    @property
    def has_generator(self) -> bool:
        return self.generator_signature != "none"

    def fingerprint(self) -> str:
        """sha256 of the factory's file and both architectures: the discriminator's
        (``LayeredModel``) and the generator's, which the plan's server step and training
        depend on."""
        h = hashlib.sha256(super().fingerprint().encode())
        h.update(f"|generator:{self.generator_signature}|source:{self.source['sha256']}".encode())
        return "sha256:" + h.hexdigest()


def _parts(ref: Reference, result: object, source: str, field: str | None
           ) -> tuple[list[tuple], tuple[int, ...], nn.Module | None]:
    """(layers, input shape, generator) of a factory's result, every shape checked by a
    dry run on zeros (eval mode, no gradients, torch's random state untouched)."""
    def bad(problem: str) -> InputError:
        return InputError(source, field, f"{ref.text}: {problem}")

    if not isinstance(result, dict):
        raise bad(f"returned {type(result).__name__}, expected a dict with keys {', '.join(CONTRACT_KEYS)} "
                  "(docs/own-data.md)")
    unknown = sorted(set(result) - set(CONTRACT_KEYS))
    if unknown:
        raise bad(f"returned unknown key {unknown[0]!r}, expected {', '.join(CONTRACT_KEYS)}")
    d = result.get("discriminator")
    shape = result.get("input_shape")
    if isinstance(d, LayeredModel):
        if shape is not None and tuple(shape) != d.input_shape:
            raise bad(f"input_shape {tuple(shape)} differs from the LayeredModel's {d.input_shape}")
        shape = d.input_shape
        layers = [(n.name, m, n.inputs) for n, m in zip(d.nodes, d.layers)]
    elif isinstance(d, nn.Sequential) and len(d):
        layers = [(n.replace(".", "_"), m) for n, m in d.named_children()]
    else:
        raise bad(f"'discriminator' is {type(d).__name__}, expected a non-empty nn.Sequential (its children are "
                  "the layers a plan cuts) or a planner.models.LayeredModel")
    if not (isinstance(shape, (tuple, list)) and shape and all(isinstance(x, int) and x > 0 for x in shape)):
        raise bad(f"'input_shape' is {shape!r}, expected the (C, H, W) of one image as positive ints")
    shape = tuple(shape)
    probe = LayeredModel("probe", shape, layers)
    out = _dry_run(probe, torch.zeros(_PROBE, *shape), bad, "discriminator")
    if tuple(out.shape) != (_PROBE, 1):
        raise bad(f"the discriminator returns {list(out.shape)} for {_PROBE} images of {list(shape)}, expected "
                  f"[{_PROBE}, 1] (one logit per image)")
    g = result.get("generator")
    if g is None:
        if result.get("z_dim") is not None:
            raise bad("'z_dim' without a 'generator'")
        return layers, shape, None
    if not isinstance(g, nn.Module):
        raise bad(f"'generator' is {type(g).__name__}, expected an nn.Module")
    z_dim = result.get("z_dim", getattr(g, "z_dim", None))
    if not (isinstance(z_dim, int) and z_dim > 0) or getattr(g, "z_dim", z_dim) != z_dim:
        raise bad(f"'z_dim' is {z_dim!r} (generator.z_dim {getattr(g, 'z_dim', None)!r}), expected the noise "
                  "size as a positive int")
    g.z_dim = z_dim  # the trainer draws z of this size
    fake = _dry_run(g, torch.zeros(_PROBE, z_dim), bad, "generator")
    if tuple(fake.shape) != (_PROBE, *shape):
        raise bad(f"the generator makes {list(fake.shape)} from z [{_PROBE}, {z_dim}], the discriminator takes "
                  f"[{_PROBE}, {', '.join(map(str, shape))}]")
    return layers, shape, g


def _dry_run(module: nn.Module, x: torch.Tensor, bad, what: str) -> torch.Tensor:
    was = module.training
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            module.eval()
            return module(x)
    except Exception as e:  # noqa: BLE001 - a shape error in user code is an input error
        raise bad(f"the {what} fails on a batch of shape {list(x.shape)}: {_one_line(e)}") from None
    finally:
        module.train(was)


def _signature(g: nn.Module | None) -> str:
    if g is None:
        return "none"
    return f"z_dim={g.z_dim}|{g!r}|{[tuple(p.shape) for p in g.parameters()]}"


def build_model(text: str, *, source: str = "--model", field: str | None = None) -> LayeredModel:
    """A fresh discriminator for the reference ``text`` (weights from torch's random
    state); any problem raises ``InputError`` naming ``source`` (and ``field``)."""
    ref = parse_reference(text, source=source, field=field)
    if ref is None:
        return build_discriminator(text)
    module, digest = _load_file(ref, source, field) if ref.is_file else _load_module(ref, source, field)
    factory = getattr(module, ref.factory, None)
    if not callable(factory):
        raise InputError(source, field, f"{ref.text}: {ref.target} defines no function {ref.factory!r}")

    def call() -> tuple[list[tuple], tuple[int, ...], nn.Module | None]:
        try:
            result = factory()
        except (Exception, SystemExit) as e:  # noqa: BLE001 - sys.exit in a factory ends no command
            raise InputError(source, field, f"{ref.text}: the factory raised {_one_line(e)}") from None
        return _parts(ref, result, source, field)

    layers, shape, g = call()
    return UserModel(text, shape, layers, generator_signature=_signature(g), source={"sha256": digest},
                     make_generator=lambda: call()[2])


def generator_for(model: LayeredModel) -> nn.Module | None:
    """A fresh generator for ``model`` (weights from torch's random state): its factory's,
    the seed's DCGAN generator for a built-in size, else None."""
    if isinstance(model, UserModel):
        return model.make_generator()
    if model.input_shape in BUILTIN_GENERATOR_SHAPES:
        return Generator(image_size=model.input_shape[-1])
    return None


def model_record(model: LayeredModel) -> dict:
    """What a plan's ``model`` block says about where ``model`` came from, beyond its
    name (the reference): the sha256 of a user factory's file."""
    return {"source": model.source} if isinstance(model, UserModel) else {}

