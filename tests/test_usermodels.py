"""Your own discriminator and generator (``--model file.py:factory``) on your own images
(``--data images:DIR``): profiled, planned, trained local and dist; refused when the model
file changed since planning; the factory contract's errors.

The factory lives in a temporary file (``tests.helpers.FACTORY``): a 3x16x16 RGB pair small
enough to train in seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cli import app
from planner.check import step_time_s, violations
from planner.errors import InputError
from planner.planfile import load_plan
from planner.reference import solve_reference
from planner.usermodel import build_model, generator_for
from planner.profile_cache import cache_dir, profile_model
from trainer.roles.build import check_plan_model
from trainer.quality.classifier import cache_key, default_epochs
from tests.helpers import FACTORY, assert_opened_exactly, write_factory
from trainer.data.datasets import DataSource, held_out_rows

BATCH = 8
CLASSES = ("red", "green", "blue")


def write_images(folder: Path, *, per_class: int = 12, size: int = 16) -> Path:
    """Class folders of coloured squares on black, ``per_class`` each."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.zeros((size, size, 3), dtype=np.uint8)
            top, left = rng.integers(0, size // 2, 2)
            pixels[top:top + size // 2, left:left + size // 2, c] = rng.integers(128, 256)
            Image.fromarray(pixels).save(folder / name / f"{i:03d}.png")
    return folder


def _device(name: str, capacity: int, *, data: bool = False) -> dict:
    return {"name": name, "processing_time_factor": 1.0, "capacity": capacity, "bandwidth_mbps": 100,
            "latency_ms": 1, "holds_data": data}


@pytest.fixture(scope="module")
def planned(tmp_path_factory) -> tuple[Path, str, Path]:
    """(folder, factory reference, plan.json) of a user model planned with ``fsl plan``: two
    clients, the first one's data device too small for more than the first layer."""
    folder = tmp_path_factory.mktemp("user")
    ref = write_factory(folder)
    prof = profile_model(build_model(ref), batch_size=BATCH)  # what fsl plan reads from the cache
    first = prof.layers[0].memory_bytes
    devices = {"schema": "fsl-devices/1", "clients": [
        {"name": "small", "devices": [_device("s-sensor", first + 1, data=True), _device("s-box", 10**9)]},
        {"name": "big", "data_weight": 2.0, "devices": [_device("b-pc", 10**9, data=True)]}]}
    (folder / "devices.json").write_text(json.dumps(devices))
    result = CliRunner().invoke(app, ["plan", "--devices", str(folder / "devices.json"), "--model", ref,
                                      "--batch-size", str(BATCH), "--out", str(folder / "plan.json")])
    assert result.exit_code == 0, result.output
    return folder, ref, folder / "plan.json"


def test_a_user_factory_is_profiled_and_planned_optimally(planned):
    folder, ref, path = planned
    plan = load_plan(path)
    model = build_model(ref)
    assert plan.model["name"] == ref and plan.model["fingerprint"] == model.fingerprint()
    assert plan.model["source"]["sha256"] == hashlib.sha256((folder / "my_gan.py").read_bytes()).hexdigest()
    assert plan.model["input_shape"] == [3, 16, 16] and len(plan.model["layers"]) == len(model) == 6
    assert plan.server["step_s"] > 0  # the factory's generator was timed
    assert plan.solver["status"] == "optimal" and {c.status for c in plan.clients} == {"planned"}
    for c in plan.clients:
        stages = c.solver_stages()
        assert violations(c.costs, stages) == []  # cover every layer once, in order, memory within capacity
        assert [(s.start, s.end) for s in stages][0][0] == 0 and stages[-1].end == len(plan.model["layers"])
        assert c.stages[0].device == c.costs.devices[c.costs.data_device]
        oracle = solve_reference(c.costs)  # the exact DP on the same tables
        assert step_time_s(c.costs, stages) == pytest.approx(oracle.step_time_s, rel=1e-6)
    small = next(c for c in plan.clients if c.name == "small")
    assert [s.device for s in small.stages] == ["s-sensor", "s-box"] and small.stages[0].end == 1
    shown = CliRunner().invoke(app, ["profile", "--model", ref, "--batch-size", str(BATCH), "--format", "json"])
    assert shown.exit_code == 0, shown.output
    profiled = json.loads(shown.stdout)
    assert profiled["fingerprint"] == model.fingerprint() and [x["name"] for x in profiled["layers"]] == \
        [x["name"] for x in plan.model["layers"]]


def test_the_plans_model_rebuilds_and_a_changed_file_is_refused(planned, tmp_path):
    """Any edit of the factory's file is refused with exit 2 and one line (a custom module's
    forward can change a layer's cost without changing its repr), before --out is made."""
    folder, ref, path = planned
    model, spans = check_plan_model(load_plan(path), str(path))
    assert len(spans) == len(model) == 6
    images = write_images(tmp_path / "img")
    original = (folder / "my_gan.py").read_text()
    results = []
    try:
        for edit in (lambda: (folder / "my_gan.py").write_text(original + "\n# only a comment\n"),
                     lambda: write_factory(folder, width=12)):  # the first convolution is wider
            edit()
            results.append(CliRunner().invoke(app, ["train", "--plan", str(path), "--out", str(tmp_path / "run"),
                                                    "--data", f"images:{images}"]))
    finally:
        (folder / "my_gan.py").write_text(original)
    for result in results:
        assert result.exit_code == 2, result.output
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and f"{path}: model.fingerprint" in lines[0], result.stderr
        assert "its file changed since planning" in lines[0] and "plan again" in lines[0]
    assert not (tmp_path / "run").exists()
    check_plan_model(load_plan(path), str(path))  # the original file is accepted again


def _train(tmp_path: Path, plan_path: Path, data: str, backend: str):
    return CliRunner().invoke(app, ["train", "--plan", str(plan_path), "--backend", backend, "--rounds", "1",
                                    "--steps-per-round", "2", "--emulate", "none", "--data", data,
                                    "--alpha", "0.5", "--timeout-s", "20", "--out", str(tmp_path / "run")])


@pytest.mark.parametrize("backend", ["local", pytest.param("dist", marks=pytest.mark.slow)])
def test_trained_one_round_on_an_image_folder_and_only_data_devices_hold_images(planned, tmp_path, backend):
    """... and the quality classifier is trained in the server's process, on the held-out
    images alone: the server opened exactly those, and only the server wrote the cache
    file whose key is their contents' sha256 (removed first, so this run must train it)."""
    _, _, path = planned
    images = write_images(tmp_path / "img")
    held_out = DataSource.of(f"images:{images}", None, 0.5, 0, (3, 16, 16)).held_out()
    key = cache_key(held_out, seed=0, epochs=default_epochs(len(held_out)))
    cached = Path(cache_dir(), "classifier", f"classifier-{key[:24]}.pt")
    cached.unlink(missing_ok=True)
    result = _train(tmp_path, path, f"images:{images}", backend)
    assert result.exit_code == 0, result.output
    out = tmp_path / "run"
    [m] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert np.isfinite(m["g_loss"]) and np.isfinite(m["kid"]) and np.isfinite(m["fid"])
    assert m["quality_features"].startswith("fid, kid on the features of a classifier of the folder's 3 class")
    assert 0 <= m["classifier_accuracy"] <= 1 and m["classifier_test_images"] == 1  # a fifth of 7 held-out images
    assert cached.is_file()
    written = {role: [p for p in json.loads(f.read_text())["other_files"]
                      if p.startswith(os.path.realpath(cached.parent) + os.sep)]
               for role, f in ((f.stem, f) for f in (out / "opened").glob("*.json"))}
    assert [Path(p).name.startswith(f".{cached.name}.") for p in written.pop("server")] == [True]
    assert written and not any(written.values())  # no other role touched the classifier cache
    assert Image.open(out / "samples" / "round_0001.png").mode == "RGB"
    plan = load_plan(path)
    rows = {r["role"]: r for r in json.loads((out / "processes.json").read_text())["processes"]}
    src = DataSource.of(f"images:{images}", None, 0.5, 0, (3, 16, 16))
    weights = [c.data_weight for c in plan.planned]
    shards = [set(src.shard_rows(weights, k).tolist()) for k in range(len(weights))]
    held = set(held_out_rows(3 * 12).tolist())
    assert not shards[0] & shards[1] and not held & (shards[0] | shards[1])
    assert len(shards[0] | shards[1] | held) == 36
    assert rows["server"]["training_samples"] == 0 and rows["server"]["eval_samples"] == len(held)
    files = sorted(images.rglob("*.png"))  # in the folder's order: class folders, then names
    assert_opened_exactly(rows["server"], [files[r] for r in held], out=out)
    for k, c in enumerate(plan.planned):  # from the files each process opened (trainer.privacy.opened)
        head, *rest = [s.device for s in c.stages]
        assert rows[head]["training_samples"] == len(shards[k])
        assert_opened_exactly(rows[head], [files[r] for r in shards[k]], out=out)
        folders = [images] + [images / name for name in CLASSES]  # names are listed: shards come from them
        assert rows[head]["opened"]["data_folders_listed"] == sorted(os.path.realpath(f) for f in folders)
        for d in rest:
            assert_opened_exactly(rows[d], [], out=out)
            assert rows[d]["training_samples"] == 0 and rows[d]["opened"]["data_folders_listed"] == []
    assert len({r["pid"] for r in rows.values()}) == (len(rows) if backend == "dist" else 1)


# --- the factory contract -----------------------------------------------------------

def _bad(tmp_path: Path, body: str) -> str:
    path = tmp_path / "bad.py"
    path.write_text("from torch import nn\n\n\ndef build():\n" + body)
    return f"{path}:build"


SEQ = "nn.Sequential(nn.Conv2d(1, 4, 4, 2, 1), nn.Flatten(), nn.Linear(4 * 4 * 4, 1))"


@pytest.mark.parametrize("body, says", [
    ("    return [1]\n", "returned list, expected a dict"),
    (f"    return {{'discriminator': {SEQ}, 'input_shape': (1, 8, 8), 'generater': None}}\n", "unknown key 'generater'"),
    ("    return {'discriminator': nn.Linear(4, 1), 'input_shape': (4,)}\n", "expected a non-empty nn.Sequential"),
    (f"    return {{'discriminator': {SEQ}}}\n", "'input_shape' is None"),
    (f"    return {{'discriminator': {SEQ}, 'input_shape': (1, 16, 16)}}\n", "the discriminator fails on a batch"),
    ("    return {'discriminator': nn.Sequential(nn.Flatten()), 'input_shape': (1, 2, 2)}\n", "returns [2, 4]"),
    (f"    return {{'discriminator': {SEQ}, 'input_shape': (1, 8, 8), 'generator': nn.Linear(3, 64), 'z_dim': 3}}\n",
     "the generator makes [2, 64]"),
    (f"    return {{'discriminator': {SEQ}, 'input_shape': (1, 8, 8), 'generator': nn.Identity()}}\n", "'z_dim' is None"),
    ("    raise RuntimeError('no GPU here')\n", "the factory raised RuntimeError: no GPU here"),
])
def test_a_factory_breaking_the_contract_is_an_input_error(tmp_path, body, says):
    with pytest.raises(InputError, match="bad.py:build") as e:
        build_model(_bad(tmp_path, body))
    assert says in str(e.value)


def test_references_that_do_not_resolve_are_input_errors(tmp_path):
    cases = {"nosuch": "unknown model 'nosuch'", f"{tmp_path}/missing.py:build": "cannot read",
             "no_such_module_xyz:build": "no module 'no_such_module_xyz' on Python's path",
             write_factory(tmp_path).replace(":build", ":make"): "defines no function 'make'",
             _bad(tmp_path, "    return 1 +\n"): "executing",
             "planner.models:dcgan_discriminator": "returned LayeredModel, expected a dict"}
    for text, says in cases.items():
        with pytest.raises(InputError, match="--model") as e:
            build_model(text)
        assert says in str(e.value), (text, str(e.value))


def test_a_layered_model_and_a_module_path_are_accepted_and_fingerprints_cover_the_generator(tmp_path, monkeypatch):
    body = ("    from planner.models import dcgan_discriminator\n"
            "    return {'discriminator': dcgan_discriminator()}\n")
    model = build_model(_bad(tmp_path, body))
    assert model.input_shape == (1, 28, 28) and len(model) == 11 and generator_for(model) is None
    assert model.fingerprint() != build_model("dcgan").fingerprint()  # another name, no generator
    a = build_model(write_factory(tmp_path))
    (tmp_path / "pkg_for_fsl_test").mkdir()
    (tmp_path / "pkg_for_fsl_test" / "__init__.py").write_text(FACTORY.format(width=8))
    monkeypatch.syspath_prepend(str(tmp_path))
    by_module = build_model("pkg_for_fsl_test:build")
    assert by_module.layer_names == a.layer_names and by_module.generator_signature == a.generator_signature
    # one file, whose generator depends on the environment: the file's sha256 is the same
    switch = write_factory(tmp_path, extra="\nimport os\n_b = build\n\n\ndef build():\n    out = _b()\n"
                           "    if os.environ.get('FSL_TEST_BIAS') == '0':\n"
                           "        out['generator'][0] = nn.Linear(8, 256, bias=False)\n    return out\n")
    with_bias = build_model(switch)
    monkeypatch.setenv("FSL_TEST_BIAS", "0")
    without = build_model(switch)
    assert without.source == with_bias.source and without.layer_names == with_bias.layer_names
    assert without.fingerprint() != with_bias.fingerprint()  # only the generator's first layer differs


def test_training_without_a_generator_is_refused(tmp_path):
    body = f"    return {{'discriminator': {SEQ}, 'input_shape': (1, 8, 8)}}\n"
    ref = _bad(tmp_path, body)
    devices = {"schema": "fsl-devices/1", "clients": [{"name": "c", "devices": [_device("c-pc", 10**9, data=True)]}]}
    (tmp_path / "d.json").write_text(json.dumps(devices))
    plan = CliRunner().invoke(app, ["plan", "--devices", str(tmp_path / "d.json"), "--model", ref,
                                    "--batch-size", "4", "--out", str(tmp_path / "p.json")])
    assert plan.exit_code == 0, plan.output
    assert load_plan(tmp_path / "p.json").server["step_s"] == 0.0
    with pytest.raises(InputError, match="returns no generator to train"):
        check_plan_model(load_plan(tmp_path / "p.json"), "p.json")


def test_the_same_seed_builds_the_same_weights(tmp_path):
    ref = write_factory(tmp_path)
    torch.manual_seed(3)
    a = build_model(ref).state_dict()
    torch.manual_seed(3)
    b = build_model(ref).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_files_beside_a_factory_are_never_executed(tmp_path):
    """SECURITY.md: a file factory runs alone; its folder is not on Python's path, so a
    module beside it is not imported: importing it fails as an input error, and it never runs."""
    marker = tmp_path / "executed"
    (tmp_path / "helper_for_fsl_test.py").write_text(f"open({str(marker)!r}, 'a').write('ran')\n")
    assert len(build_model(write_factory(tmp_path))) == 6
    with pytest.raises(InputError, match="the factory raised ModuleNotFoundError: No module named 'helper_for_fsl_test'"):
        build_model(_bad(tmp_path, "    import helper_for_fsl_test\n"))
    assert not marker.exists()
