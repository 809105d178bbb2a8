"""Pre-train every weight of a small base model (the script form of ``uio-ds pretrain``; see ``--help``)."""

import sys

from uio_ds.pretrain import main

if __name__ == "__main__":
    sys.exit(main())
