"""Training algorithms over memory models: BPTT, TBPTT, incremental and unbiased incremental TBPTT,
each with a next-token and/or distillation objective."""

from uio_ds.algo.objective import Objective
from uio_ds.algo.tbptt import (
    GRAPH_MODES,
    TBPTT,
    Full,
    Incremental,
    Strategy,
    TBPTTResult,
    Unbiased,
    as_batches,
    build_strategy,
    count_targets,
)

__all__ = ["GRAPH_MODES", "TBPTT", "Full", "Incremental", "Objective", "Strategy", "TBPTTResult", "Unbiased",
           "as_batches", "build_strategy", "count_targets"]
