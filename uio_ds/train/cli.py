"""Train UIO memory with DeepSpeed: one rank of a run.

    deepspeed [--num_gpus N] launch/train.py --deepspeed ds_configs/zero2.json \\
        --config launch/configs/tiny.json [--set optim.lr=1e-4 steps=200 ...] [--resume auto]
    deepspeed --num_gpus N --module uio_ds.train --deepspeed zero2 --config tiny ...
    uio-ds train --config tiny ...          (one process, no launcher)

``--config`` and ``--deepspeed`` take a JSON file or the name of a config that ships with the
package (``uio-ds train --list-configs``). On CPU machines DeepSpeed runs with
DS_ACCELERATOR=cpu and the gloo backend; ``--num_gpus N`` then starts N CPU ranks. Every
configuration problem is reported, all at once, before the model or the data is touched.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import textwrap


def config_help() -> str:
    """Every training-config key with its default and meaning, from the dataclasses."""
    from uio_ds.config import TrainConfig, option_reference

    lines = ["training config keys (JSON file, or --set KEY=VALUE; default in brackets):"]
    for key, default, doc in option_reference(TrainConfig):
        lines.append(f"  {key} [{default}]")
        lines += textwrap.wrap(doc, 96, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="uio-ds train", description=__doc__, epilog=config_help(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="training config: a JSON file or a bundled name (tiny, smollm2, ...)")
    p.add_argument("--deepspeed", default="zero2", help="DeepSpeed config: a JSON file or a bundled name "
                   "(zero1, zero2, zero2_offload; default zero2)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override config values (VALUE is parsed as JSON, else taken as a string)")
    p.add_argument("--resume", default=None,
                   help="'auto' (latest checkpoint of this run if any), 'latest' (must exist), or a checkpoint path")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run outputs already in output_dir (checkpoints, final/, metrics, events)")
    p.add_argument("--allow-config-change", action="store_true",
                   help="resume although the config changes the run's trajectory (data, documents per step, model, "
                        "UIO shape, algorithm); steps, optim.* and the save cadence may always change")
    p.add_argument("--list-configs", action="store_true", help="print the bundled configs and exit")
    p.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    args = p.parse_args(argv)
    if not args.config and not args.list_configs:
        p.error("--config is required (a JSON file or a bundled name; --list-configs shows them)")
    if args.overwrite and args.resume:
        p.error("--overwrite and --resume contradict each other: choose one")
    return args


def validate(args):
    """Everything that can be checked without loading the model or the data; returns the
    trainer, set up by ``main``."""
    from uio_ds.config import TrainConfig, find_config
    from uio_ds.data.cache import data_digests
    from uio_ds.data.files import source_files
    from uio_ds.train.checkpoint import RunLock, check_world_size, existing_run, resume_problems, saved_config
    from uio_ds.train.trainer import Trainer

    config = TrainConfig.from_file(args.config, args.set)
    ds_path = find_config(args.deepspeed, "deepspeed")
    try:
        with open(ds_path) as f:
            ds_config = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"DeepSpeed config {ds_path} is not valid JSON: {err}") from None
    for source in config.data.sources:
        source_files(source)
    prior = existing_run(config.output_dir)
    if prior and not args.resume and not args.overwrite:
        raise FileExistsError(f"output_dir {config.output_dir!r} already holds a run ({prior}): continue it with "
                              "--resume auto, write elsewhere with --set output_dir=NEW_DIR, or replace it with "
                              "--overwrite")
    lock = RunLock(config.output_dir)
    owner = lock.holder()
    if owner is not None:
        raise RuntimeError(lock.describe(owner))
    trainer = Trainer(config, ds_config, resume=args.resume, overwrite=args.overwrite)
    target = trainer.resume_from if args.resume else None
    if target is not None:
        check_world_size(*target, trainer.world_size)
        stage = trainer.ds_config["zero_optimization"].get("stage", 0)
        digests = data_digests(config.data.sources, config.data.cache_dir, config.data.streaming)
        refusals, data_changes = resume_problems(*target, stage, digests)
        if refusals:
            raise RuntimeError(refusals[0])
        saved = saved_config(*target)
        allowed, trajectory = config.changes_since(saved) if saved is not None else ([], [])
        trajectory += data_changes
        if trajectory and not args.allow_config_change:
            raise ValueError(
                f"the config or the data changes what checkpoint {os.path.join(*target)} was training, so the "
                f"resume would not continue that run: {'; '.join(trajectory)}. Resume with its settings and data, "
                "start a new run from its parts (init_from=OUTPUT_DIR/final), or pass --allow-config-change")
        trainer.config_changes = allowed + trajectory
    return trainer


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.list_configs:
        from uio_ds.config import BUNDLED_CONFIGS, bundled_configs

        for kind in ("train", "deepspeed"):
            print(f"{kind} ({os.path.join(BUNDLED_CONFIGS, kind)}): {', '.join(bundled_configs(kind))}")
        return 0
    from uio_ds.data.files import SourceReadError
    from uio_ds.train.dist import peer_lost
    from uio_ds.train.stopping import TrainingStopped

    rank = int(os.environ.get("RANK", "0"))
    try:
        trainer = validate(args)
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError, RuntimeError) as err:
        if rank == 0:
            print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        try:
            trainer.setup()
        except (ValueError, OSError, RuntimeError) as err:  # found while setting up: no traceback
            if rank == 0 or isinstance(err, SourceReadError):  # a file only this rank reads: it says so
                print(f"error: {err}", file=sys.stderr)
            return 2
        try:
            trainer.train()
        except TrainingStopped as err:
            if rank == 0 or err.local:
                print(f"error: {err}", file=sys.stderr)
            if not err.local:  # every rank stopped at the same step: leave together
                trainer.close()
            return err.status
        except RuntimeError as err:
            if not peer_lost(err):
                raise
            # another rank died (killed, out of memory): its launcher stops this one too; one line, not gloo's trace
            cause = re.sub(r"^\[[^\]]*\]\s*", "", str(err).strip().splitlines()[0])[:120]  # gloo's source place
            print(f"error: rank {rank} lost the other ranks ({cause}); "
                  f"{trainer.checkpoints.last_good()}; continue with --resume auto", file=sys.stderr)
            return 1
        trainer.close()
    finally:
        trainer.release()
    return 0

