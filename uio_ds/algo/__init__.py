"""Training algorithms over memory models: BPTT, TBPTT, incremental and unbiased incremental TBPTT."""

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

__all__ = ["GRAPH_MODES", "TBPTT", "Full", "Incremental", "Strategy", "TBPTTResult", "Unbiased", "as_batches",
           "build_strategy", "count_targets"]
