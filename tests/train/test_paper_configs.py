"""The paper-scale training configs that ship with the package: each loads, validates against its
model's shape (a local config.json written from the planner's shapes, no weights) and the
offloading DeepSpeed config on 8 ranks, and keeps the paper's hyper-parameters."""

import json
import os

import pytest
from transformers import AutoConfig

from uio_ds.config import TrainConfig, find_config
from uio_ds.model.parts import base_model_problems
from uio_ds.model.positions import length_problem
from uio_ds.plan.memory import SHAPES
from uio_ds.train.ds_config import resolve_ds_config

PAPER_CONFIGS = {  # config name -> (model shape, segment length, ratio, document tokens)
    "llama2_7b_chat_ratio32": ("llama2-7b", 1024, 32, 100000),
    "llama2_7b_chat_ratio8": ("llama2-7b", 1024, 8, 25000),
    "llama3_8b_ratio32": ("llama3-8b", 1024, 32, 100000),
    "mistral_7b_ratio32": ("mistral-7b", 1024, 32, 100000),
    "qwen2_7b_ratio32": ("qwen2-7b", 1024, 32, 100000),
}


@pytest.mark.parametrize("name", sorted(PAPER_CONFIGS))
def test_paper_config_validates_against_its_model(name, tmp_path):
    shape, l, ratio, tokens = PAPER_CONFIGS[name]
    config = TrainConfig.from_file(name)
    uio = config.uio
    assert (uio.segment_length, uio.compression_ratio, config.data.max_tokens) == (l, ratio, tokens)
    for lora, targets in ((uio.encoder_lora, ("q_proj", "v_proj")), (uio.transfer_lora, ("k_proj", "v_proj"))):
        assert (lora.rank, lora.alpha, tuple(lora.target_modules)) == (128, 512, targets)
    assert (config.algorithm.name, config.algorithm.window) == ("unbiased", 2)
    assert config.optim.lr == 1e-4 and config.optim.warmup_steps > 0 and uio.dtype == "bfloat16"

    model_dir = tmp_path / shape
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(SHAPES[shape]))
    base = AutoConfig.from_pretrained(str(model_dir))
    assert base_model_problems(base, uio) == []
    # the longest document the data lets through fits the model's positions
    assert length_problem(uio, tokens, base.max_position_embeddings) is None
    with open(find_config("zero2_offload", "deepspeed")) as f:
        ds, graph_mode = resolve_ds_config(json.load(f), config, world_size=8)
    assert ds["train_batch_size"] == 8 and ds["bf16"]["enabled"] and graph_mode == "offload"
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"


@pytest.mark.parametrize("name", sorted(PAPER_CONFIGS))
def test_paper_config_has_a_committed_plan(name):
    """benchmarks/results/plans/<name>.json: uio-ds plan on 8 ranks with zero2_offload."""
    from helpers import REPO

    path = os.path.join(REPO, "benchmarks", "results", "plans", f"{name}.json")
    with open(path) as f:
        plan = json.load(f)
    assert plan["config"] == name and plan["ranks"] == 8 and plan["deepspeed"] == "zero2_offload"
    row = plan["rows"][0]
    assert row["tokens"] == PAPER_CONFIGS[name][3] and row["peak_gib"] > row["frozen weights"] > 0
