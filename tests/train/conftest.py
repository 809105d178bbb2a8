"""The training config that the launcher tests of this folder share."""

import json

import pytest

from uio_ds.formats import synthetic_text


@pytest.fixture(scope="session")
def run_config(tiny_dirs, tmp_path_factory):
    """A training config over a jsonl of generated documents of different lengths."""
    root = tmp_path_factory.mktemp("e2e")
    with open(root / "docs.jsonl", "w") as f:
        for i in range(24):
            f.write(json.dumps({"text": synthetic_text(8 + 5 * (i % 7), seed=i)}) + "\n")
        f.write("{broken json\n")  # skipped and counted, not fatal
    with open(root / "qa.jsonl", "w") as f:  # prompt-completion records: only the answer is scored
        for i in range(8):
            f.write(json.dumps({"prompt": synthetic_text(6 + i, seed=50 + i) + " The number was", "answer": f" {i}."})
                    + "\n")
    config = {
        "model_path": tiny_dirs["llama"],
        "uio": {"segment_length": 32, "compression_ratio": 8,
                "encoder_lora": {"rank": 4, "alpha": 16, "target_modules": ["q_proj", "v_proj"]},
                "transfer_lora": {"rank": 4, "alpha": 16, "target_modules": ["k_proj", "v_proj"]}},
        "data": {"sources": [{"path": str(root / "docs.jsonl")},
                             {"path": str(root / "qa.jsonl"), "text_field": "prompt", "completion_field": "answer"}],
                 "documents_per_step": 2, "max_tokens": 200,
                 "cache_dir": str(root / "cache")},
        "algorithm": {"name": "unbiased", "window": 2},
        "optim": {"lr": 0.003, "warmup_steps": 2},
        "steps": 4,
        "save_every": 2,
        "keep_last": 1,
    }
    path = root / "config.json"
    path.write_text(json.dumps(config))
    return str(path), root
