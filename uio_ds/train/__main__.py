"""``python -m uio_ds.train`` (what ``deepspeed --module uio_ds.train`` runs)."""

import sys

from uio_ds.train.cli import main

sys.exit(main())
