"""The one base-model loader: transformers' hub kernels stay off, so nothing is fetched at run time
and the meta device works (transformers 5.25's kernelize refuses it)."""

import pytest
import torch

from uio_ds.model.base import load_causal_lm


def test_base_models_load_without_hub_kernels(tiny_dirs):
    model = load_causal_lm(tiny_dirs["llama"])
    assert not model.use_kernels
    on_meta = load_causal_lm(tiny_dirs["llama"], device_map={"": "meta"})
    assert {p.device for p in on_meta.parameters()} == {torch.device("meta")}
    with pytest.raises(ValueError, match="use_kernels=False"):
        load_causal_lm(tiny_dirs["llama"], use_kernels=True)
