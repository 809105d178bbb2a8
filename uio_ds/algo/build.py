"""Strategies by name, or from a run's ``algorithm`` section."""

from __future__ import annotations

from uio_ds.algo.base import Strategy
from uio_ds.algo.incremental import Incremental, Unbiased
from uio_ds.algo.objective import Objective
from uio_ds.algo.plain import TBPTT, Full
from uio_ds.config import ALGORITHMS, AlgorithmConfig


def build_strategy(name: str, window: int | None = None, **kwargs) -> Strategy:
    """``full``, ``tbptt``, ``incremental`` or ``unbiased`` with window S."""
    if name == "full":
        return Full(objective=kwargs.get("objective"))
    if name == "tbptt":
        if window is None:
            raise ValueError("tbptt needs a window S >= 1")
        return TBPTT(window, objective=kwargs.get("objective"))
    if name == "incremental":
        return Incremental(window, **kwargs)
    if name == "unbiased":
        return Unbiased(window, **kwargs)
    raise ValueError(f"unknown strategy {name!r}: choose one of {list(ALGORITHMS)}")


def strategy_from_config(algorithm: AlgorithmConfig, objective: Objective | None = None, *,
                         graph_mode: str | None = None, rank: int = 0, offload_device: str = "cpu") -> Strategy:
    """The strategy of a run's ``algorithm`` section. ``graph_mode``: the mode "auto" resolved to
    (the engine reads it off the DeepSpeed config; default: the section's, "auto" as keep);
    ``rank`` offsets the reservoir's seed, so ranks sample their windows apart."""
    kwargs = {}
    if algorithm.name in ("incremental", "unbiased"):
        mode = algorithm.graph_mode if graph_mode is None else graph_mode
        kwargs.update(graph_mode="keep" if mode == "auto" else mode, offload_device=offload_device,
                      encode_batch_size=algorithm.encode_batch_size)
    if algorithm.name == "unbiased":
        kwargs.update(seed=algorithm.seed + rank, compensate=algorithm.compensate)
    return build_strategy(algorithm.name, algorithm.window, objective=objective, **kwargs)
