"""Config files: the configs that ship with the package, ``--set a.b=value`` overrides, and what a
resume may change of the config a checkpoint was written with."""

from __future__ import annotations

import json
import os
from typing import Any

from uio_ds.config.base import ConfigError

# The configs that ship with the package: configs/deepspeed (ZeRO stages) and configs/train (runs)
BUNDLED_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def bundled_configs(kind: str) -> list[str]:
    """Names of the configs of ``kind`` ("deepspeed" or "train") that ship with the package."""
    folder = os.path.join(BUNDLED_CONFIGS, kind)
    return sorted(f[: -len(".json")] for f in os.listdir(folder) if f.endswith(".json"))


def find_config(name: str, kind: str) -> str:
    """The file for ``name``: an existing path as given, else the bundled config of that name
    (``zero2``, ``tiny``, with or without ``.json``)."""
    if os.path.isfile(name):
        return name
    stem = name[: -len(".json")] if name.endswith(".json") else name
    bundled = os.path.join(BUNDLED_CONFIGS, kind, stem + ".json")
    if os.sep not in stem and os.path.isfile(bundled):
        return bundled
    what = "DeepSpeed config" if kind == "deepspeed" else "training config"
    raise FileNotFoundError(f"{what} {name!r} not found: give a JSON file or a bundled name "
                            f"({', '.join(bundled_configs(kind))})")



def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``data`` with each ``a.b.c=value`` set (value parsed as JSON when it parses, else a string)."""
    data = json.loads(json.dumps(data))
    for item in overrides:
        if "=" not in item:
            raise ConfigError("training config", [f"override {item!r}: expected key.path=value"])
        key, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError("training config", [f"override {item!r}: {p} is not a section"])
        node[parts[-1]] = value
    return data


# What a resumed run may change: the length and rate of the run, its outputs, and options that
# change how the same computation runs. Any other difference changes the trajectory (the data,
# its order, the model, the memory shape, the gradient), so the resume would not be exact.
RESUME_MAY_CHANGE = ("steps", "optim.", "save_every", "keep_last", "log_every", "max_bad_steps", "max_part_growth", "output_dir",
                     "init_from", "uio.attention", "uio.decoder_recompute", "algorithm.graph_mode", "algorithm.encode_batch_size",
                     "data.cache_dir", "data.num_proc")


def _flatten(value: Any, where: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        return {k: v for key, item in value.items() for k, v in _flatten(item, f"{where}.{key}" if where else key).items()}
    return {where: list(value) if isinstance(value, tuple) else value}


def config_changes(saved: dict[str, Any], new: dict[str, Any], defaults: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The differences between the training config a checkpoint was written with and ``new``
    (both ``TrainConfig.to_dict()``), as ``key: old -> new``: (those a resume may apply, those
    that change the run's trajectory). An option missing from ``saved`` that ``new`` holds at its
    value in ``defaults`` was added since the checkpoint was written: no change."""
    before, after = _flatten(json.loads(json.dumps(saved))), _flatten(json.loads(json.dumps(new)))
    defaults = _flatten(json.loads(json.dumps(defaults)))
    allowed, trajectory = [], []
    for key in sorted(set(before) | set(after)):
        old, value = before.get(key, "(unset)"), after.get(key, "(unset)")
        if old == value or (old == "(unset)" and key in defaults and value == defaults[key]):
            continue  # an option added since the checkpoint was written, at its default: the same run
        change = f"{key}: {json.dumps(old)} -> {json.dumps(value)}"
        may = any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUME_MAY_CHANGE)
        (allowed if may else trajectory).append(change)
    return allowed, trajectory
