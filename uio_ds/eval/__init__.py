"""Evaluation: perplexity, pass key, auto-encoding and LongBench-format QA over the methods
that long-context models are compared with (``uio_ds.eval.methods``), and the memory model as a
model of lm-evaluation-harness (``lm_eval_model``, run by ``uio-ds lm-eval``: ``lm_eval_cli``)."""
