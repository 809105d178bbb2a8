"""``python -m uio_ds.plan``."""

import sys

from uio_ds.plan.cli import main

sys.exit(main())
