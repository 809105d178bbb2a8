"""Equal work on every rank: the base-model passes of a step in lockstep across ranks (ZeRO-3).

Under ZeRO-3 every rank holds a slice of each frozen weight, and a module's weights are gathered
from all ranks (a collective) when the module runs forward or backward. Ranks must therefore run
the same sequence of module passes, while TBPTT gives each rank its own documents, with their own
segment counts, reservoir evictions and unscored segments. ``Lockstep`` makes the sequences equal
without changing any rank's gradient:

* the strategy announces each self-contained pass before running it, as a *kind*: an encoder
  call without graph (``ENCODE``), an encoder graph rebuilt and back-propagated (``FLUSH``), or a
  decoder step (transfer head, decoder, backward) with or without memory and with or without
  memory leaves that take gradient;
* the ranks agree on the smallest kind any of them wants (one all-reduce of an integer); the
  ranks that want it run their real pass, the others a *padding pass* of that kind on a dummy
  segment whose results are thrown away (its gradient never reaches a buffer), and announce again;
* at the end of the step a rank with nothing left keeps running padding passes until every rank
  is done.

Each round at least one rank runs a real pass, so the step ends; a pass of a kind runs the same
modules in the same order whatever its data, so the gathers line up. Passes are self-contained
(no graph outlives its kind), which is why the encoder graphs are rebuilt at flush time
(``graph_mode='recompute'``) rather than kept between passes.
"""

from __future__ import annotations

from typing import Callable

import torch

from uio_ds.algo.passes import grad_of, read_kv

ENCODE, FLUSH = 0, 1
DONE = 1 << 20


def decode_kind(has_memory: bool, memory_leaves: bool) -> int:
    """The kind of a decoder step: whether it reads memory, and whether some of that memory is a
    leaf taking gradient (the transfer head's backward then runs through the base projections)."""
    return 2 + int(has_memory) + int(has_memory and memory_leaves)


class Lockstep:
    """Keeps the ranks' passes in step; ``agree(kind)`` returns the minimum of ``kind`` over ranks."""

    def __init__(self, agree: Callable[[int], int]):
        self.agree = agree
        self.padding_passes = 0

    def enter(self, model, kind: int) -> None:
        """Return when every rank runs a pass of ``kind`` together; pad until then."""
        while True:
            chosen = self.agree(kind)
            if chosen == kind:
                return
            self._pad(model, chosen)

    def finish(self, model) -> None:
        """Pad until every rank has run all its passes of the step."""
        while (chosen := self.agree(DONE)) != DONE:
            self._pad(model, chosen)

    def _pad(self, model, kind: int) -> None:
        self.padding_passes += 1
        params = model.trainable_parameters()
        ids = torch.full((1, model.segment_length), 3, dtype=torch.long, device=model.device)
        if kind == ENCODE:
            with torch.no_grad():
                model.encode(ids)
        elif kind == FLUSH:
            out = model.encode(ids)
            torch.autograd.grad(out, params, grad_outputs=torch.zeros_like(out), allow_unused=True)
        else:
            has_memory, leaves = kind >= 3, kind == 4
            memory = []
            if has_memory:
                value = torch.zeros(1, model.num_layers, model.num_mem_tokens, model.base.config.hidden_size,
                                    dtype=model.mem_embeddings.dtype, device=model.device)
                memory = [value.requires_grad_(leaves)]
            out = model.decode(ids, read_kv(model, memory, 1), ids)
            grad_of(out.loss_sum * 0.0, list(params) + [m for m in memory if m.requires_grad])
