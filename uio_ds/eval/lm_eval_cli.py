"""``uio-ds lm-eval ARGS``: lm-evaluation-harness's own command line, with ``--model uio_ds`` known.

lm-eval 0.4.13's command line (``lm_eval``, ``lm-eval``) finds only the models of its own source
tree: it has no entry-point group or option that would import a model from another package. So
this command imports ``uio_ds.eval.lm_eval_model``, which registers ``uio_ds`` in the harness's
registry, and then runs the harness's command line unchanged with ARGS: every option, subcommand
(``run``, ``ls``, ``validate``) and output is lm-eval's. Kept apart from the model module so that
a missing lm-eval is one line that names the extra, not an import traceback.
"""

from __future__ import annotations

import importlib.util
import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if importlib.util.find_spec("lm_eval") is None:
        print("error: uio-ds lm-eval needs the evaluation harness: pip install 'uio_ds[lmeval]'", file=sys.stderr)
        return 2
    from lm_eval.__main__ import cli_evaluate

    import uio_ds.eval.lm_eval_model  # noqa: F401  (registers --model uio_ds with the harness)
    from uio_ds.eval.lm_eval_args import ModelArgsError

    saved = sys.argv
    sys.argv = ["uio-ds lm-eval", *argv]  # the harness's parser reads sys.argv itself
    try:
        cli_evaluate()
    except ModelArgsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        sys.argv = saved
    return 0
