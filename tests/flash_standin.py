"""A pure-PyTorch stand-in for flash-attn 2's functions, with their calling convention and
documented semantics, so the flash_attention_2 path of transformers can run on the CPU.

From flash-attn's documentation (``flash_attn_func`` / ``flash_attn_varlen_func``):

* q: (batch, seqlen_q, nheads, headdim); k, v: (batch, seqlen_k, nheads_k, headdim), with
  nheads divisible by nheads_k (multi-query / grouped-query attention: query head h reads
  key/value head h // (nheads / nheads_k)); the output has q's shape.
* softmax_scale defaults to 1 / sqrt(headdim).
* causal=True: "the causal mask is aligned to the bottom right corner of the attention
  matrix": query i may attend to key j when j <= i + seqlen_k - seqlen_q. (flash-attn < 2.1
  aligned it top-left: j <= i. ``TOP_LEFT`` switches the stand-in to that older behaviour so a
  test can show it would be caught.)
* window_size=(left, right), -1 meaning unbounded: key j is visible when
  i + seqlen_k - seqlen_q - left <= j <= i + seqlen_k - seqlen_q + right.
* varlen: sequences packed along the token axis, delimited by cu_seqlens_q / cu_seqlens_k.
"""

from __future__ import annotations

import contextlib
import math

import torch

TOP_LEFT = [False]
CALLS: list[dict] = []


def _attend(q, k, v, softmax_scale, causal, window_size, softcap):
    # q (Sq, H, D), k/v (Sk, Hk, D) -> (Sq, H, D), computed in at least float32
    sq, h, d = q.shape
    sk, hk = k.shape[0], k.shape[1]
    if h % hk:
        raise ValueError(f"nheads={h} is not divisible by nheads_k={hk}")
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(d)
    k = k.repeat_interleave(h // hk, dim=1)
    v = v.repeat_interleave(h // hk, dim=1)
    ct = torch.promote_types(q.dtype, torch.float32)
    scores = torch.einsum("qhd,khd->hqk", q.to(ct), k.to(ct)) * scale
    if softcap:
        scores = softcap * torch.tanh(scores / softcap)
    i = torch.arange(sq).unsqueeze(1)
    j = torch.arange(sk).unsqueeze(0)
    shift = 0 if TOP_LEFT[0] else sk - sq
    allowed = torch.ones(sq, sk, dtype=torch.bool)
    left, right = window_size
    if causal:
        right = 0
    if right >= 0:
        allowed &= j <= i + shift + right
    if left >= 0:
        allowed &= j >= i + shift - left
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # a query that sees no key outputs 0
    return torch.einsum("hqk,khd->qhd", probs, v.to(ct)).to(q.dtype)


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                    softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False):
    if q.ndim != 4 or k.ndim != 4 or v.shape != k.shape or q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"expected (batch, seqlen, nheads, headdim) tensors, got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    if dropout_p or alibi_slopes is not None or return_attn_probs:
        raise NotImplementedError("the stand-in covers dropout_p=0, no ALiBi, no attention probabilities")
    CALLS.append({"fn": "flash_attn_func", "q": tuple(q.shape), "k": tuple(k.shape), "causal": causal})
    return torch.stack([_attend(q[b], k[b], v[b], softmax_scale, causal, window_size, softcap)
                        for b in range(q.shape[0])])


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                           softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                           alibi_slopes=None, deterministic=False, return_attn_probs=False, block_table=None):
    if dropout_p or alibi_slopes is not None or return_attn_probs or block_table is not None:
        raise NotImplementedError("the stand-in covers dropout_p=0, no ALiBi, no probabilities, no paging")
    CALLS.append({"fn": "flash_attn_varlen_func", "q": tuple(q.shape), "k": tuple(k.shape), "causal": causal})
    out = []
    for n in range(len(cu_seqlens_q) - 1):
        qs = slice(int(cu_seqlens_q[n]), int(cu_seqlens_q[n + 1]))
        ks = slice(int(cu_seqlens_k[n]), int(cu_seqlens_k[n + 1]))
        out.append(_attend(q[qs], k[ks], v[ks], softmax_scale, causal, window_size, softcap))
    return torch.cat(out)


@contextlib.contextmanager
def flash_standin(top_left: bool = False):
    """Route transformers' flash_attention_2 path to the stand-in for the duration of the block."""
    from transformers import modeling_flash_attention_utils as fa

    def lazy_imports(implementation, attention_wrapper=None, allow_all_kernels=False):
        return flash_attn_func, flash_attn_varlen_func, None, fa._pad_input, fa._unpad_input

    saved = fa._lazy_imports, fa._loaded_implementation
    fa._lazy_imports, fa._loaded_implementation = lazy_imports, None
    TOP_LEFT[0] = top_left
    CALLS.clear()
    try:
        yield CALLS
    finally:
        fa._lazy_imports = saved[0]
        fa._loaded_implementation = None  # the next user re-imports whatever is really installed
        TOP_LEFT[0] = False
