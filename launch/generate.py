"""Stream a continuation of a long prompt with a UIO memory model.

    python launch/generate.py --model models/smollm2 [--uio runs/x/final] --prompt-file book.txt \\
        [--max-new-tokens 64] [--sample --temperature 0.8 --top-p 0.9]

The same as ``python -m uio_ds generate``: the prompt's full segments are compressed in
parallel, the residual is decoded, and new tokens stream out with re-compression every l
tokens; prefill and decode tokens/s are reported at the end.
"""

import sys

from uio_ds.cli import main

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
