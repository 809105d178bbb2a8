"""Evaluate a UIO memory model against no memory, StreamingLLM and full attention, on local files
(the script form of ``uio-ds eval``; see ``--help``).

    python launch/eval.py --model models/smollm2 --uio runs/x/final --data data/kjv --split eval \\
        --tasks perplexity passkey [autoencode longbench --longbench qa.jsonl] --name my_eval

Writes benchmarks/results/NAME.json, NAME_perplexity.png and NAME_passkey.png.
"""

import sys

from uio_ds.eval.run import main

if __name__ == "__main__":
    sys.exit(main())
