"""Train UIO memory with DeepSpeed.

    deepspeed [--num_gpus N] launch/train.py --deepspeed ds_configs/zero2.json \\
        --config launch/configs/tiny.json [--set optim.lr=1e-4 steps=200 ...] [--resume auto]

On CPU machines DeepSpeed runs with DS_ACCELERATOR=cpu and the gloo backend (set
automatically); ``--num_gpus N`` then starts N CPU ranks. Every configuration problem is
reported, all at once, before the model or the data is touched.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="training config (JSON)")
    p.add_argument("--deepspeed", default="ds_configs/zero2.json", help="DeepSpeed config (JSON)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config values")
    p.add_argument("--resume", default=None,
                   help="'auto' (latest checkpoint of this run if any), 'latest' (must exist), or a checkpoint path")
    p.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    return p.parse_args(argv)


def validate(args) -> tuple:
    """Everything that can be checked without loading the model or the data."""
    from uio_ds.checkpoint import check_world_size, resume_target
    from uio_ds.data.pipeline import source_files
    from uio_ds.engine import resolve_ds_config
    from uio_ds.train_config import TrainConfig

    config = TrainConfig.from_file(args.config, args.set)
    try:
        with open(args.deepspeed) as f:
            ds_config = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"DeepSpeed config {args.deepspeed!r} not found") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"DeepSpeed config {args.deepspeed} is not valid JSON: {err}") from None
    if not os.path.isfile(os.path.join(config.model_path, "config.json")):
        raise FileNotFoundError(f"model_path {config.model_path!r} has no config.json: give a local model directory "
                                "(make prepare writes models/smollm2; python -m uio_ds make-tiny writes a tiny one)")
    for source in config.data.sources:
        source_files(source)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    resolve_ds_config(ds_config, config, world_size)
    if args.resume:
        target = resume_target(args.resume, os.path.join(config.output_dir, "checkpoints"))
        if target is not None:
            check_world_size(*target, world_size)
    return config, ds_config


def main(argv=None) -> int:
    args = parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    try:
        config, ds_config = validate(args)
    except (ValueError, FileNotFoundError, PermissionError, RuntimeError) as err:
        if rank == 0:
            print(f"error: {err}", file=sys.stderr)
        return 2
    from uio_ds.trainer import Trainer

    trainer = Trainer(config, ds_config, resume=args.resume).setup()
    trainer.train()
    trainer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
