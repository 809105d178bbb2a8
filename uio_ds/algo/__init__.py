"""Training algorithms over memory models: full BPTT, TBPTT, incremental and unbiased incremental
TBPTT, each with a next-token and/or distillation objective.

Pure PyTorch (no DeepSpeed): a strategy reads documents, runs the decoder losses and the
encoder passes of a memory model, and returns the gradient of every trainable parameter
in buffers of its own (``torch.autograd.grad``, never ``.grad``), plus loss statistics.
An engine then hands the buffers to its optimizer however it needs to.

The model is a recurrent net over segments: J_t, the loss of segment t, depends on the
memories m_1..m_{t-1} of all earlier segments, and m_s depends on segment s only
(Eq. 5 of the paper). The strategies differ in which d J_t / d m_s reach the encoder:

* ``full``: all of them (plain autograd through the whole document; the reference).
* ``tbptt(S)``: the S most recent memories, computed the plain way: for every t the window
  is re-encoded with a graph and back-propagated through: O(T*S) encoder backward passes.
* ``incremental(S)``: the same gradient; each memory the decoders read is a detached leaf
  copy that accumulates d J_t / d m_s, and its encoder graph is back-propagated once, when
  it leaves the window: O(T) encoder backward passes.
* ``unbiased(S)``: the window is a reservoir sample of size S over all past memories (each
  kept with probability min(1, S/(t-1))); each new contribution is multiplied by
  max(1, (t-1)/S), so the expected gradient is the full one. Evicted memories get their
  encoder backward at eviction, the rest at the end.

Everything outside the encoder path is exact in every strategy: the transfer head sees
every memory (detached ones included) with its own gradient, as does the decoder loss.

Modules: ``protocol`` (what a strategy uses of a model), ``passes`` (the passes they share),
``base`` (``Strategy``, ``TBPTTResult``), ``plain`` (full, tbptt), ``incremental`` (incremental,
unbiased), ``build`` (by name or from a config), ``objective``, ``lockstep`` (ZeRO-3).
"""

from uio_ds.algo.base import Strategy, TBPTTResult
from uio_ds.algo.build import build_strategy, strategy_from_config
from uio_ds.algo.incremental import Incremental, Unbiased
from uio_ds.algo.objective import Objective
from uio_ds.algo.passes import as_batches, batch_targets, count_targets
from uio_ds.algo.plain import TBPTT, Full
from uio_ds.algo.protocol import MemoryModel
from uio_ds.config import GRAPH_MODES

__all__ = ["GRAPH_MODES", "TBPTT", "Full", "Incremental", "MemoryModel", "Objective", "Strategy", "TBPTTResult",
           "Unbiased", "as_batches", "batch_targets", "build_strategy", "count_targets", "strategy_from_config"]
