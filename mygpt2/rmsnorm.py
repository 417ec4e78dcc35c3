"""RMSNorm with its own backward: fewer passes than PyTorch's composite on a CPU.

    y = rms_norm(x, weight, eps)   # x / sqrt(mean(x^2) + eps) * weight, over the last dim

`F.rms_norm` is written out of small ops (pow, mean, add, rsqrt, mul, mul) on the CPU, and
autograd keeps and differentiates each one: for the queries and keys of the speedrun model
(`qk_norm`, with an RMSNorm before every block) that was a fifth of a bf16 training step at
two threads (docs/BENCHMARKS.md). Here forward keeps the normalised x_hat (float32) and the
per-row 1/rms, and backward computes the input gradient in one formula,

    dx = r * (g * w - x_hat * mean(g * w * x_hat)),  x_hat = x * r,  r = 1 / rms(x),

the weight gradient as sum(g * x_hat) over the rows. Keeping x_hat rather than x spares
backward a cast and a product (the speedrun's bf16 step 42.1 -> 41.0 ms), at the price of
float32 memory where x is bf16. The arithmetic runs in float32 (float64 for float64 x), and
y comes back in x's dtype, as `F.rms_norm` gives.
`RMSNorm` is `nn.RMSNorm` (same parameters and state-dict names) calling it.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.autograd.function import once_differentiable


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        xf = x.to(_compute(x))
        r = xf.square().mean(dim=-1, keepdim=True).add_(eps).rsqrt_()  # (..., 1)
        x_hat = xf.mul_(r) if xf is not x else xf * r  # in place on a copy, never on x
        if weight is not None:
            y = x_hat * weight.to(xf.dtype)
        else:  # x_hat itself is kept for backward: the output is a tensor of its own
            y = x_hat.clone() if x_hat.dtype == x.dtype else x_hat
        ctx.save_for_backward(x_hat, r, weight)
        ctx.x_dtype = x.dtype
        return y.to(x.dtype)

    @staticmethod
    @once_differentiable  # a second derivative is refused (F.rms_norm has one)
    def backward(ctx, grad):
        x_hat, r, weight = ctx.saved_tensors
        g = grad.to(r.dtype)  # grad itself when float32: not written in place then
        grad_weight = None
        if weight is not None and ctx.needs_input_grad[1]:
            rows = (g * x_hat).reshape(-1, x_hat.size(-1))
            grad_weight = rows.sum(dim=0).to(weight.dtype)
        if weight is not None:
            w = weight.to(g.dtype)
            g = g.mul_(w) if g is not grad else g * w
        dot = (g * x_hat).mean(dim=-1, keepdim=True)
        # x_hat stays as it is: a retained graph's second backward reads it again
        grad_x = g.sub_(x_hat * dot) if g is not grad else g - x_hat * dot
        return grad_x.mul_(r).to(ctx.x_dtype), grad_weight, None


def _compute(x: torch.Tensor) -> torch.dtype:
    # float32 for bf16/fp16 activations; float64 stays float64 (gradcheck)
    return torch.promote_types(x.dtype, torch.float32)


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float | None) -> torch.Tensor:
    """`F.rms_norm(x, (x.size(-1),), weight, eps)`, computed in float32, returned in x's
    dtype; `eps=None` is x's dtype's machine epsilon, as there."""
    if eps is None:
        eps = torch.finfo(x.dtype).eps
    return _RMSNorm.apply(x, weight, eps)


class RMSNorm(nn.RMSNorm):
    """`nn.RMSNorm` over the last dimension, through `rms_norm`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.normalized_shape) != 1:  # the model normalises the last dim only
            return super().forward(x)
        return rms_norm(x, self.weight, self.eps)
