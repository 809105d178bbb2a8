"""Run by the real ``deepspeed`` launcher from tests/test_engine.py: a few optimizer steps under
several DeepSpeed configs, ranks holding different numbers of documents and segments. Rank 0
saves the trainable parameters after every step for comparison with a single-process reference."""

import argparse
import json
import os

import torch
from engine_cases import CASES, case_documents, case_model, case_train_config

from uio_ds.algo import build_strategy
from uio_ds.config import find_config
from uio_ds.train import dist as process_group
from uio_ds.train import engine
from uio_ds.train.ds_config import resolve_ds_config


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--local_rank", type=int, default=-1)
    args = p.parse_args()
    rank, world = engine.init_distributed()
    for name, case in CASES.items():
        cfg = case_train_config(args.model, case)
        with open(find_config(case["ds"], "deepspeed")) as f:
            ds_config, graph_mode = resolve_ds_config(json.load(f), cfg, world)
        model = case_model(args.model, case)
        options = {} if case["algorithm"] == "full" else {"graph_mode": graph_mode}
        strategy = build_strategy(case["algorithm"], case["window"], **options)
        eng = engine.UIOEngine(model, ds_config, strategy,
                               lr_lambda=lambda step, cfg=cfg: cfg.optim.lr_multiplier(step, cfg.steps))
        history = []
        for step in range(case["steps"]):
            out = eng.train_step(case_documents(case, rank, step))
            history.append({"loss": out.loss, "grad_norm": out.grad_norm, "lr": out.lr, "tokens": out.tokens,
                            "stats": out.stats,
                            "params": [p.detach().clone() for p in model.trainable_parameters()]})
        frozen = [p for p in model.parameters() if not p.requires_grad]
        layout = {  # what ZeRO-3 kept whole and what each rank holds of the rest
            "whole": sum(p.ds_numel for p in frozen if p.ds_persist),
            "partition": sum(p.ds_tensor.numel() for p in frozen if not p.ds_persist),
        } if ds_config["zero_optimization"]["stage"] == 3 else None
        if rank == 0:
            torch.save({"history": history, "graph_mode": graph_mode, "zero3_layout": layout},
                       os.path.join(args.out, f"{name}.pt"))
        process_group.barrier()


if __name__ == "__main__":
    main()
