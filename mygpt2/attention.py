"""Attention written out step by step, where `F.scaled_dot_product_attention` will not do.

    y = attention_written_out(q, k, v, mask, is_causal, dropout_p, hooks, at)

Two callers in `mygpt2.model`: hooks on the attention scores or pattern (the fused kernel
never materialises them), and bf16 training on a CPU, where PyTorch's fused kernel runs its
backward 2-5x slower than three plain matmuls and a softmax (`fused_is_slow`; measured in
docs/BENCHMARKS.md). The written-out form keeps the (B, nh, t, S) scores for backward, so it
takes SDPA's place only while they stay small (`WRITTEN_OUT_MAX_SCORES`).
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from mygpt2.hooks import Hooks

# The written-out attention keeps its (B, nh, t, S) softmax for backward, in float32 and as a
# bf16 copy (6 bytes an element): up to this many elements per layer (about 100 MB) it takes
# the place of SDPA where that is slow; a 124M step at batch 4, T 256 keeps 3.1 M a layer.
WRITTEN_OUT_MAX_SCORES = 2**24


def fused_is_slow(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether to train with the written-out attention instead of SDPA: bf16 on a CPU, where
    PyTorch's fused kernel's backward is 2-5x slower than the written-out matmuls (GPT-2 124M
    and smaller shapes, docs/BENCHMARKS.md), while the scores fit `WRITTEN_OUT_MAX_SCORES`."""
    B, nh, t, _ = q.shape
    return (
        q.device.type == "cpu"
        and q.dtype == torch.bfloat16
        and torch.is_grad_enabled()
        and B * nh * t * k.size(-2) <= WRITTEN_OUT_MAX_SCORES
    )


def attention_pattern(
    q: torch.Tensor,
    k: torch.Tensor,
    mask: torch.Tensor | None = None,
    is_causal: bool = True,
    hooks: Hooks | None = None,
    at: str = "",
) -> torch.Tensor:
    """softmax(q k^T / sqrt(hs)) of queries and keys (B, nh, t, hs) and (B, nh, S, hs), with
    `mask` (True: may attend) or the causal mask hiding keys: (B, nh, t, S) in q's dtype, the
    softmax taken in float32. A query that sees no key (left padding) gets zeros, as SDPA
    gives, not NaN. The model's written-out attention and the health probe both call this."""
    scores = (q @ k.transpose(-2, -1)).div_(math.sqrt(q.size(-1)))  # (B, nh, t, S)
    may_see_nothing = mask is not None  # a causal mask lets every query see itself
    if is_causal and mask is None:  # no cache: t == S
        mask = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).tril()
    if mask is not None:  # in place: the scores of long texts are large
        scores = scores.masked_fill_(~mask, float("-inf"))
    if hooks is not None:
        scores = hooks(at + "hook_attn_scores", scores)
    pattern = scores.softmax(dim=-1, dtype=torch.float32).to(q.dtype)
    if may_see_nothing:
        pattern = pattern.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)
    return pattern


def attention_written_out(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    is_causal: bool,
    dropout_p: float,
    hooks: Hooks | None,
    at: str,
) -> torch.Tensor:
    """What `F.scaled_dot_product_attention` computes, step by step: for hooks on the attention
    scores (divided by sqrt(hs), masked entries -inf) and the pattern, and for bf16 training on
    CPUs (`fused_is_slow`). Equal to SDPA within 1e-6 in float32; the softmax runs in float32."""
    pattern = attention_pattern(q, k, mask, is_causal, hooks, at).to(v.dtype)
    if hooks is not None:
        pattern = hooks(at + "hook_pattern", pattern)  # (B, nh, t, S)
    if dropout_p > 0:
        pattern = F.dropout(pattern, dropout_p)
    return pattern @ v  # (B, nh, t, hs)
