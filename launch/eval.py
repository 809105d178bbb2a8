"""Evaluate a UIO memory model against no memory, StreamingLLM and full attention, on local files.

    python launch/eval.py --model models/smollm2 --uio runs/x/final --data data/kjv --split eval \\
        --tasks perplexity passkey [autoencode longbench --longbench qa.jsonl] --name my_eval

Writes benchmarks/results/NAME.json, NAME_perplexity.png and NAME_passkey.png.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from uio_ds.eval.run import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
