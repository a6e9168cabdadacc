"""Write the malformed plans of ``tests/corpus/plans/`` from one valid plan.

``base_plan.json`` is the output of one real run, made once and committed::

    fsl plan --devices profiles/lab.json --out tests/corpus/base_plan.json

(``--regenerate-base`` runs that again.) Each mutation breaks one rule of SPEC §2 or of
the JSON itself in the first client (clinic-a: a-phone holds layers 0..3 and has the
data, a-laptop 4..10, a-watch is unused); the file is named for what is wrong. Values
are derived from the base plan, so the mutations stay wrong if the base is regenerated.
The tests read the committed files; run this script again after changing it::

    python tests/corpus/make_plans.py
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).parent
BASE = HERE / "base_plan.json"
OUT = HERE / "plans"
ROOT = HERE.parent.parent

# the layers of dcgan64 (14), for a plan whose tables have dcgan's 11
DCGAN64_LAYERS = ["b1_conv", "b1_lrelu", "b2_conv", "b2_lrelu", "b3_conv", "b3_lrelu", "b4_conv",
                  "b4_lrelu", "b4_drop", "b5_conv", "b5_lrelu", "b5_drop", "flatten", "dense"]


def _client(p: dict) -> dict:
    return p["clients"][0]


def _stages(p: dict) -> list[dict]:
    return _client(p)["stages"]


def _costs(p: dict) -> dict:
    return _client(p)["costs"]


def _set(obj: dict, **kw) -> None:
    obj.update(kw)


def _drop(container: list | dict, key: int | str = -1) -> None:
    container.pop(key)


def _device_used_twice(p: dict) -> None:
    second = _stages(p)[1]
    mid = (second["start"] + second["end"]) // 2
    _stages(p)[1:] = [{**second, "end": mid}, {**second, "start": mid}]


def _first_stage_elsewhere(p: dict) -> None:
    a, b = _stages(p)
    a["device"], b["device"] = b["device"], a["device"]


def _empty_stage(p: dict) -> None:
    cut = _stages(p)[0]["end"]
    unused = _costs(p)["devices"][2]
    _stages(p).insert(1, {**_stages(p)[0], "device": unused, "start": cut, "end": cut})


def _memory_over_capacity(p: dict) -> None:
    stage = _stages(p)[0]
    _costs(p)["capacity_bytes"][0] = stage["memory_bytes"] - 1


def _over_budget(p: dict) -> None:
    _costs(p)["budget_s"] = _client(p)["step_time_s"] / 2


def _other_model(p: dict) -> None:
    p["model"]["layers"] = [{"name": n, "flops": 0, "param_bytes": 0, "output_bytes": 0} for n in DCGAN64_LAYERS]


def _link_zero(p: dict) -> None:
    _costs(p)["link_bytes_per_s"][0][1] = 0


def _not_square(p: dict) -> None:
    _costs(p)["link_latency_s"][1].pop()


def _exclude_all(p: dict) -> None:
    for c in p["clients"]:
        _set(c, status="excluded", reason="too slow", stages=[])


def _profile_as_plan(p: dict) -> dict:
    return json.loads((ROOT / "profiles" / "lab.json").read_text())


MUTATIONS: dict[str, Callable[[dict], dict | None]] = {
    "stages_overlap": lambda p: _set(_stages(p)[1], start=_stages(p)[1]["start"] - 1),
    "stages_skip_a_layer": lambda p: _set(_stages(p)[1], start=_stages(p)[1]["start"] + 1),
    "last_stage_stops_short": lambda p: _set(_stages(p)[1], end=_stages(p)[1]["end"] - 1),
    "last_stage_past_the_model": lambda p: _set(_stages(p)[1], end=_stages(p)[1]["end"] + 1),
    "stage_start_negative": lambda p: _set(_stages(p)[0], start=-1),
    "stage_start_string": lambda p: _set(_stages(p)[0], start="0"),
    "empty_stage": _empty_stage,
    "stage_on_unknown_device": lambda p: _set(_stages(p)[1], device="a-tablet"),
    "first_stage_not_on_data_device": _first_stage_elsewhere,
    "device_used_twice": _device_used_twice,
    "memory_over_capacity": _memory_over_capacity,
    "step_over_budget": _over_budget,
    "planned_client_without_stages": lambda p: _set(_client(p), stages=[]),
    "excluded_client_with_stages": lambda p: _set(_client(p), status="excluded", reason="too slow"),
    "client_status_unknown": lambda p: _set(_client(p), status="maybe"),
    "compute_table_short_row": lambda p: _drop(_costs(p)["compute_s"][1]),
    "memory_table_missing_row": lambda p: _drop(_costs(p)["memory_bytes"]),
    "cut_bytes_too_long": lambda p: _costs(p)["cut_bytes"].append(1000),
    "capacity_table_short": lambda p: _drop(_costs(p)["capacity_bytes"]),
    "link_table_not_square": _not_square,
    "link_zero_bandwidth": _link_zero,
    "compute_negative": lambda p: _costs(p)["compute_s"][0].__setitem__(0, -0.1),
    "capacity_zero": lambda p: _costs(p)["capacity_bytes"].__setitem__(2, 0),
    "data_device_unknown": lambda p: _set(_costs(p), data_device="a-tablet"),
    "duplicate_device_in_costs": lambda p: _costs(p)["devices"].__setitem__(2, "a-phone"),
    "costs_missing": lambda p: _drop(_client(p), "costs"),
    "model_layer_count_of_another_model": _other_model,
    "model_without_layers": lambda p: _set(p["model"], layers=[]),
    "wrong_schema_version": lambda p: _set(p, schema="fsl-plan/2"),
    "schema_missing": lambda p: _drop(p, "schema"),
    "device_profile_given_as_plan": _profile_as_plan,
    "objective_unknown": lambda p: _set(p, objective="fastest"),
    "batch_size_zero": lambda p: _set(p, batch_size=0),
    "batch_size_float": lambda p: _set(p, batch_size=64.0),
    "batch_size_huge": lambda p: _set(p, batch_size=1_000_000_000),  # once allocated until the OOM killer came
    "device_named_server": lambda p: _costs(p)["devices"].__setitem__(2, "server"),  # the generator's role
    "clients_empty": lambda p: _set(p, clients=[]),
    "top_level_array": lambda p: [p],
    # these crashed `fsl show` before planfile.py typed them
    "planned_client_without_step_time": lambda p: _set(_client(p), step_time_s=None),
    "round_time_missing": lambda p: _set(p, round_time_s=None),
    "solver_empty": lambda p: _set(p, solver={}),
    "solver_seconds_string": lambda p: _set(p["solver"], seconds="fast"),
    "baselines_not_numbers": lambda p: _set(_client(p), baselines_step_time_s={"uniform": "slow"}),
    "processing_time_factor_list": lambda p: _set(_client(p), processing_time_factor=[4.0, 1.0, 12.0]),
    "excluded_client_without_reason": lambda p: _set(_client(p), status="excluded", reason=None, stages=[]),
    "no_client_planned": _exclude_all,
}

# Byte-level damage: name -> function of the base file's text.
RAW: dict[str, Callable[[str], bytes]] = {
    "empty_file": lambda t: b"",
    "truncated": lambda t: t[: len(t) // 2].encode(),
    "non_utf8_bytes": lambda t: t.replace('"clinic-a"', '"clinic-\xe9"', 1).encode("latin-1"),
    "nan_literal": lambda t: t.replace('"round_time_s": ', '"round_time_s": NaN, "was": ', 1).encode(),
    "infinity_literal": lambda t: t.replace('"budget_s": ', '"budget_s": Infinity, "was": ', 1).encode(),
    "deeply_nested": lambda t: b'{"schema": "fsl-plan/1", "clients": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
}


def regenerate_base() -> None:
    cmd = ["fsl", "plan", "--devices", "profiles/lab.json", "--out", str(BASE.relative_to(ROOT)), "--format", "json"]
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    if "--regenerate-base" in sys.argv or not BASE.exists():
        regenerate_base()
    text = BASE.read_text()
    base = json.loads(text)
    OUT.mkdir(exist_ok=True)
    for old in OUT.glob("*.json"):
        old.unlink()
    for name, mutate in MUTATIONS.items():
        plan = copy.deepcopy(base)
        result = mutate(plan)
        (OUT / f"{name}.json").write_text(json.dumps(plan if result is None else result, indent=1) + "\n")
    for name, damage in RAW.items():
        (OUT / f"{name}.json").write_bytes(damage(text))
    print(f"wrote {len(MUTATIONS) + len(RAW)} plans to {OUT}")


if __name__ == "__main__":
    main()
