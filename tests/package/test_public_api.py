"""What users import and run keeps working whatever the modules inside are called: the names the
README and docs use, the launch scripts, ``python -m`` of each command, the DeepSpeed configs."""

import json
import os
import subprocess
import sys

import pytest
from helpers import REPO, launcher_env

PUBLIC = {
    "uio_ds": ["ConfigError", "LoRAConfig", "UIOConfig", "__version__"],
    "uio_ds.config": ["TrainConfig", "DataConfig", "SourceConfig", "AlgorithmConfig", "ObjectiveConfig",
                      "OptimConfig", "ALGORITHMS", "GRAPH_MODES", "find_config", "bundled_configs",
                      "apply_overrides", "option_reference"],
    "uio_ds.model": ["UIOMemoryModel", "generate", "MemoryStream", "GenerationResult", "MemoryKV", "DecoderOutput",
                     "DocumentOutput", "PositionRangeError", "resolve_device", "default_device", "split_segments",
                     "segment_targets"],
    "uio_ds.algo": ["Full", "TBPTT", "Incremental", "Unbiased", "Strategy", "TBPTTResult", "Objective", "MemoryModel",
                    "build_strategy", "strategy_from_config", "as_batches", "count_targets"],
    "uio_ds.baselines": [],
    "uio_ds.train": ["main"],
    "uio_ds.plan": ["main"],
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_public_names_import(module):
    imported = __import__(module, fromlist=["*"])
    missing = [name for name in PUBLIC[module] if not hasattr(imported, name)]
    assert not missing, f"{module} lost {missing}"
    assert set(PUBLIC[module]) - {"__version__"} <= set(getattr(imported, "__all__", PUBLIC[module]))


def test_commands_run_as_modules_and_scripts():
    env = launcher_env()
    for cmd in ([sys.executable, "-m", "uio_ds.train", "--list-configs"], [sys.executable, "-m", "uio_ds.plan", "--help"],
                [sys.executable, "-m", "uio_ds", "--help"],
                *([sys.executable, os.path.join(REPO, "launch", f), "--help"] for f in
                  ("train.py", "eval.py", "generate.py", "pretrain.py"))):
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0 and proc.stdout, f"{' '.join(cmd[1:])}: {proc.stderr[-2000:]}"


def test_deepspeed_configs_are_the_bundled_ones():
    """``ds_configs/NAME.json`` (what the README's commands pass) and ``--deepspeed NAME`` (the
    bundled copy) are the same files."""
    from uio_ds.config import bundled_configs, find_config

    names = sorted(f[: -len(".json")] for f in os.listdir(os.path.join(REPO, "ds_configs")) if f.endswith(".json"))
    assert names == bundled_configs("deepspeed") and {"zero1", "zero2", "zero3"} <= set(names)
    for name in names:
        with open(os.path.join(REPO, "ds_configs", name + ".json")) as a, open(find_config(name, "deepspeed")) as b:
            assert json.load(a) == json.load(b), name
    assert {"tiny", "smollm2"} <= set(bundled_configs("train"))
