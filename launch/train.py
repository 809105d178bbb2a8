"""Train UIO memory with DeepSpeed (the script form of ``uio_ds.train``; see ``--help``).

    deepspeed [--num_gpus N] launch/train.py --deepspeed ds_configs/zero2.json \\
        --config launch/configs/tiny.json [--set optim.lr=1e-4 steps=200 ...] [--resume auto]
"""

import sys

from uio_ds.train import main

if __name__ == "__main__":
    sys.exit(main())
