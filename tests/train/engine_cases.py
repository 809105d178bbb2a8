"""Scenarios shared by the DeepSpeed worker and the single-process reference in tests/test_engine.py."""

import torch

from uio_ds.config import LoRAConfig, TrainConfig, UIOConfig
from uio_ds.model.memory_model import UIOMemoryModel

WORLD = 2
CASES = {
    # ranks read different numbers of documents of different lengths (different segment counts)
    "zero2": {"ds": "zero2.json", "algorithm": "incremental", "window": 2, "steps": 3, "clip": 0.5},
    "zero1": {"ds": "zero1.json", "algorithm": "incremental", "window": 2, "steps": 2, "clip": 0.0},
    "zero2_offload": {"ds": "zero2_offload.json", "algorithm": "incremental", "window": 2, "steps": 2, "clip": 1.0},
    "zero2_full": {"ds": "zero2.json", "algorithm": "full", "window": None, "steps": 2, "clip": 0.0},
    # the frozen base partitioned across the ranks, their passes in lockstep with padding passes
    "zero3": {"ds": "zero3.json", "algorithm": "incremental", "window": 2, "steps": 3, "clip": 0.5},
    "zero3_offload": {"ds": "zero3_offload.json", "algorithm": "incremental", "window": 2, "steps": 2, "clip": 1.0},
}


def uio_config() -> UIOConfig:
    return UIOConfig(
        segment_length=16,
        compression_ratio=4,
        encoder_lora=LoRAConfig(rank=4, alpha=8.0, target_modules=("q_proj", "v_proj")),
        transfer_lora=LoRAConfig(rank=4, alpha=8.0, target_modules=("k_proj", "v_proj")),
    )


def case_model(path: str, case: dict) -> UIOMemoryModel:
    model = UIOMemoryModel.from_pretrained(path, uio_config())
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():  # LoRA B starts at zero; move off it so every parameter has gradient
        for p in model.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


def case_train_config(model_path: str, case: dict) -> TrainConfig:
    return TrainConfig.from_dict({
        "model_path": model_path,
        "uio": uio_config().to_dict(),
        "data": {"sources": [{"path": "unused"}], "documents_per_step": 1},
        "algorithm": {"name": case["algorithm"], "window": case["window"]},
        "optim": {"lr": 0.01, "warmup_steps": 2, "min_lr_ratio": 0.5, "grad_clip": case["clip"],
                  "weight_decay": 0.01},
        "steps": case["steps"],
    })


def case_documents(case: dict, rank: int, step: int) -> list[torch.Tensor]:
    """Rank 0 reads one document of 3-4 segments, rank 1 two documents of 2 and 5-6 segments."""
    gen = torch.Generator().manual_seed(1000 * step + rank)
    lengths = [40 + step] if rank == 0 else [25, 85 - step]
    return [torch.randint(3, 500, (n,), generator=gen) for n in lengths]
