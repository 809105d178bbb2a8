import sys

from uio_ds.cli import main

sys.exit(main())
