"""Write trained parts to a release directory with the runtime options a release ships with.

The weights are those of ``--parts``; what changes is how they run by default: ``--memory-window``
keeps every decoder call within the base model's positions whatever the length (the oldest
memories are dropped), so ``uio-ds serve`` and ``uio-ds chat`` never refuse a long conversation;
``--recent-tokens`` and ``--sink-tokens`` set the raw window and the attention sinks the release
reads with (by default those the parts were trained with).
The parts are loaded onto the base model and saved again (so the release is checked to load), into
a new directory that replaces ``--out`` only once it is complete.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="base model directory")
    p.add_argument("--parts", required=True, help="trained parts (save_trained's directory)")
    p.add_argument("--out", required=True, help="release directory (replaced when complete)")
    p.add_argument("--memory-window", type=int, required=True, help="memories a decoder call reads at most")
    p.add_argument("--recent-tokens", type=int, default=None, help="raw recent window in tokens (default: the parts')")
    p.add_argument("--sink-tokens", type=int, default=None, help="attention sinks in tokens (default: the parts')")
    p.add_argument("--card", default=None, help="a README.md to ship with the parts (default: keep --out's)")
    args = p.parse_args(argv)

    from uio_ds.config import UIOConfig
    from uio_ds.model.memory_model import UIOMemoryModel

    try:
        config, _ = UIOConfig.load(args.parts)
        reading = {"memory_window": args.memory_window, "recent_tokens": args.recent_tokens,
                   "sink_tokens": args.sink_tokens}
        config = dataclasses.replace(config, **{k: v for k, v in reading.items() if v is not None})
        model = UIOMemoryModel.from_pretrained(args.model, config)
        model.load_trained(args.parts)
        if model.max_tokens_supported() is not None:
            raise ValueError(f"--memory-window {args.memory_window}: a decoder call would still pass the base "
                             f"model's {model.max_positions} positions; choose a smaller window")
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    staging = args.out.rstrip("/") + ".partial"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_trained(staging)
    card = args.card or os.path.join(args.out, "README.md")
    if os.path.isfile(card):
        shutil.copy(card, os.path.join(staging, "README.md"))
    # the old release is moved aside, not deleted, until the new one is in place
    old = args.out.rstrip("/") + ".old"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.isdir(args.out):
        os.replace(args.out, old)
    os.replace(staging, args.out)
    shutil.rmtree(old, ignore_errors=True)
    print(f"wrote {args.out}: {args.parts} with memory_window={config.memory_window}, "
          f"recent_tokens={config.recent_tokens}, sink_tokens={config.sink_tokens} "
          f"(every decoder call within {model.max_positions} positions)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
