"""Evaluation: perplexity, pass key, auto-encoding and LongBench-format QA over the methods
that long-context models are compared with (``uio_ds.eval.methods``)."""
