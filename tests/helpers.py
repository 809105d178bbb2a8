"""Helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import math
import os
import sys

import torch

from uio_ds.config import LoRAConfig, UIOConfig
from uio_ds.model.memory_model import UIOMemoryModel


def adapters(rank: int, alpha: float) -> dict:
    """Encoder LoRA on q/v and transfer-head LoRA on k/v of one rank and alpha."""
    return {"encoder_lora": LoRAConfig(rank=rank, alpha=alpha, target_modules=("q_proj", "v_proj")),
            "transfer_lora": LoRAConfig(rank=rank, alpha=alpha, target_modules=("k_proj", "v_proj"))}


def small_config(**overrides) -> UIOConfig:
    """l=16, ratio 4 (m=4), rank-4 adapters: every path exercised at test speed."""
    return UIOConfig(**{"segment_length": 16, "compression_ratio": 4, **adapters(4, 8.0), **overrides})


def perturb_trainable(model: UIOMemoryModel, seed: int = 0, scale: float = 0.05) -> None:
    """Move every trainable tensor off its initial value (LoRA B starts at zero), reproducibly."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)


def load(path: str, **overrides) -> UIOMemoryModel:
    return UIOMemoryModel.from_pretrained(path, small_config(**overrides)).eval()


def random_ids(batch: int, length: int, seed: int = 0, vocab: int = 500) -> torch.Tensor:
    # Ids start at 3 to stay clear of the special tokens (<s>, </s>, <pad>).
    return torch.randint(3, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def assert_same_function(got: torch.Tensor, want: torch.Tensor, config, layers: int | None = None) -> None:
    """``got`` and ``want`` compute the same function of the same inputs, in another order of summation.

    Two such computations differ by rounding only: another kernel shape (a mask instead of a
    shorter sequence, a batch of two instead of one), another CPU's SIMD width (AVX2 against
    AVX-512) or another blocking of the same matmul each reorder the sums. A sum of n terms in
    another order differs by about sqrt(n) units of the last place of its scale (rounding errors
    of either sign add as a random walk; n u is the rarely reached worst case), and each of the
    model's layers adds its own such error to the residual stream, which carries it on. So the
    tolerance is ``layers * sqrt(width) * eps(dtype) * max|want|``, with ``width`` the longest
    reduction of a layer (hidden or MLP size) from the model's ``config``. On SmolLM2 (30 layers,
    MLP 1,536) that is 1.4e-4 of the scale, about 100 times the differences seen on AMD EPYC and
    Intel Xeon CPUs (5.8e-6 and 1.1e-5 on memories of scale 7.8), and far below what a real
    difference gives (a <mem> position one off changes memories by more than 1).
    """
    layers = config.num_hidden_layers if layers is None else layers
    width = max(config.hidden_size, getattr(config, "intermediate_size", 0) or 0)
    atol = layers * math.sqrt(width) * torch.finfo(want.dtype).eps * float(want.detach().abs().max())
    torch.testing.assert_close(got, want, rtol=0, atol=atol)


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launcher_env() -> dict:
    """Environment for subprocesses that run the real launchers: CPU DeepSpeed, this venv, one
    thread per rank (two ranks share the two cores)."""
    env = dict(os.environ, DS_ACCELERATOR="cpu", PYTHONPATH=REPO, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


def free_port() -> int:
    """A TCP port nothing listens on now, for a launcher's --master_port (tests run in parallel)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def attention_inputs(base_model, embeds: torch.Tensor) -> torch.Tensor:
    """Every layer's attention input (after its input norm) at the last position: (B, L, H)."""
    hidden = base_model.model(inputs_embeds=embeds, output_hidden_states=True).hidden_states
    return torch.stack([layer.input_layernorm(hidden[i])[:, -1] for i, layer in enumerate(base_model.model.layers)],
                       dim=1)


def slow_stepwise_memory(model: UIOMemoryModel, ids: torch.Tensor, base_model=None) -> torch.Tensor:
    """<mem> token i computed from what it may see and nothing else: the causal model over
    [segment[:e_i] ; <mem>_i], whose positions 0..e_i are the layout's (e_i = ceil((i+1) n / m)).
    With ``base_model`` the plain transformers model runs instead of the encoder adapter."""
    n, m = ids.shape[1], model.num_mem_tokens
    columns = []
    for i in range(m):
        end = -(-(i + 1) * n // m)
        embeds = model.base.get_input_embeddings()(ids[:, :end])
        embeds = torch.cat([embeds, model.mem_embeddings[i].to(embeds.dtype).expand(ids.shape[0], 1, -1)], dim=1)
        if base_model is not None:
            columns.append(attention_inputs(base_model, embeds))
        else:
            with model.adapter("encoder"):
                columns.append(attention_inputs(model.base, embeds))
    return torch.stack(columns, dim=2)
