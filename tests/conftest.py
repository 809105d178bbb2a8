"""Shared fixtures: tiny checkpoints written to disk once per session and loaded
through ``from_pretrained``, exactly as a user's local model directory would be."""

from __future__ import annotations

import os

import pytest
import torch

from uio_ds.model.tiny import TINY_ARCHITECTURES, build_tiny_model

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, str]:
    """One saved tiny model directory per architecture (llama, mistral, qwen2)."""
    root = tmp_path_factory.mktemp("tiny")
    return {arch: build_tiny_model(arch, str(root / arch)) for arch in TINY_ARCHITECTURES}


@pytest.fixture(scope="session")
def short_context_dir(tmp_path_factory) -> str:
    """A tiny Llama with only 64 positions, to reach the position limit quickly."""
    return build_tiny_model("llama", str(tmp_path_factory.mktemp("short") / "llama64"), max_position_embeddings=64)
