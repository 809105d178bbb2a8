"""Configuration, as dataclasses with validation and nothing else: this package imports no other
part of uio_ds, so every layer may read it.

* ``model``: the memory model (``UIOConfig``, ``LoRAConfig``);
* ``data``: the data sources and how documents are cut (``SourceConfig``, ``DataConfig``);
* ``objective``: the weights of the training objectives (``ObjectiveConfig``);
* ``run``: a training run (``TrainConfig`` with its algorithm, objective and optimiser sections);
* ``files``: bundled configs, ``--set`` overrides and what a resume may change;
* ``base``: the error listing every problem, building sections from JSON, the option reference.
"""

from uio_ds.config.base import ConfigError, option_reference
from uio_ds.config.data import ALPACA_PROMPT, SOURCE_KINDS, DataConfig, SourceConfig
from uio_ds.config.files import BUNDLED_CONFIGS, apply_overrides, bundled_configs, find_config
from uio_ds.config.model import CONFIG_NAME, LoRAConfig, UIOConfig
from uio_ds.config.objective import ObjectiveConfig
from uio_ds.config.run import (
    ALGORITHMS,
    GRAPH_MODES,
    AlgorithmConfig,
    OptimConfig,
    TrainConfig,
)

__all__ = ["ALGORITHMS", "ALPACA_PROMPT", "BUNDLED_CONFIGS", "CONFIG_NAME", "GRAPH_MODES", "SOURCE_KINDS",
           "AlgorithmConfig", "ConfigError", "DataConfig", "LoRAConfig", "ObjectiveConfig", "OptimConfig",
           "SourceConfig", "TrainConfig", "UIOConfig", "apply_overrides", "bundled_configs", "find_config",
           "option_reference"]
