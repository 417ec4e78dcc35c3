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
from torch.autograd.function import once_differentiable
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
    hooks: Hooks | _Noting | None = None,
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
) -> torch.Tensor | None:
    """What `F.scaled_dot_product_attention` computes, step by step: for hooks on the attention
    scores (divided by sqrt(hs), masked entries -inf) and the pattern, and for bf16 training on
    CPUs (`fused_is_slow`). Equal to SDPA within 1e-6 in float32; the softmax runs in float32.
    Plain causal attention (no hook on scores or pattern, no mask, no dropout) goes through
    `causal_attention`, with its own backward.

    None when the hooks only looked (returned None, wrote nothing) and nothing needs the written-out
    form (no gradient to reach the hooked values, no dropout): the caller's SDPA then gives the
    output, bit for bit the unhooked forward's (in bf16 the written-out steps round
    differently, so watching would change what is watched)."""
    watched = hooks is not None and hooks.wants(at + "hook_attn_scores", at + "hook_pattern")
    if not watched and mask is None and is_causal and dropout_p == 0:
        return causal_attention(q, k, v)
    noting = _Noting(hooks) if hooks is not None else None
    pattern = attention_pattern(q, k, mask, is_causal, noting, at).to(v.dtype)
    if noting is not None:
        pattern = noting(at + "hook_pattern", pattern)  # (B, nh, t, S)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    if noting is not None and not noting.replaced and dropout_p == 0 and not needs_grad:
        return None
    if dropout_p > 0:
        pattern = F.dropout(pattern, dropout_p)
    return pattern @ v  # (B, nh, t, hs)


class _Noting:
    """`hooks`, noting whether any hook changed the tensor it was given (`Hooks.changed`)."""

    def __init__(self, hooks: Hooks):
        self.hooks, self.replaced = hooks, False

    def __call__(self, name: str, x: torch.Tensor) -> torch.Tensor:
        out, changed = self.hooks.changed(name, x)
        self.replaced = self.replaced or changed
        return out


class _CausalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v):
        B, nh, t, hs = q.shape
        q3, k3, v3 = (x.reshape(B * nh, t, hs) for x in (q, k, v))
        scale = 1.0 / math.sqrt(hs)
        above = ~torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
        hidden = torch.zeros(t, t, dtype=q.dtype, device=q.device).masked_fill_(above, -math.inf)
        # scale and mask inside the product: one rounding of the scores, no passes over them
        scores = torch.baddbmm(hidden, q3, k3.transpose(1, 2), alpha=scale)  # (B nh, t, t)
        pattern = torch.softmax(scores, dim=-1)  # float32 arithmetic inside, q's dtype out
        ctx.save_for_backward(q3, k3, v3, pattern)
        ctx.scale = scale
        return torch.bmm(pattern, v3).view(B, nh, t, hs)

    @staticmethod
    @once_differentiable  # a second derivative is refused, never computed wrong
    def backward(ctx, grad):
        q3, k3, v3, pattern = ctx.saved_tensors
        g = grad.reshape(q3.shape)
        grad_v = torch.bmm(pattern.transpose(1, 2), g)
        grad_pattern = torch.bmm(g, v3.transpose(1, 2))
        # softmax's backward: pattern * (grad_pattern - rowsum(grad_pattern * pattern)); the
        # masked entries have pattern 0, so their gradient is 0
        grad_scores = torch._softmax_backward_data(grad_pattern, pattern, -1, pattern.dtype)
        grad_scores = grad_scores.mul_(ctx.scale)
        grad_q = torch.bmm(grad_scores, k3)
        grad_k = torch.bmm(grad_scores.transpose(1, 2), q3)
        return grad_q.view(grad.shape), grad_k.view(grad.shape), grad_v.view(grad.shape)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(hs), causal) v for (B, nh, t, hs) queries, keys and values, with
    a backward of five batched matmuls and softmax's own backward kernel. Autograd through the
    written-out ops kept the scores, their masked and scaled copies and float32 casts, and
    differentiated each: on a CPU in bf16 this form runs attention's forward and backward
    2-2.5x faster (GPT-2 124M and the speedrun model, docs/BENCHMARKS.md). Equal to SDPA in
    float64 within rounding (tested, gradients included)."""
    if torch.is_autocast_enabled(q.device.type):  # the products' dtype, as autocast gives
        dtype = torch.get_autocast_dtype(q.device.type)
    else:
        dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
    with torch.autocast(q.device.type, enabled=False):  # backward must meet forward's dtypes
        return _CausalAttention.apply(q.to(dtype), k.to(dtype), v.to(dtype))
