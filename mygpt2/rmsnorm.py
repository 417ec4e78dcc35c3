"""RMSNorm with its own backward: fewer passes than PyTorch's composite on a CPU.

    y = rms_norm(x, weight, eps)   # x / sqrt(mean(x^2) + eps) * weight, over the last dim

`F.rms_norm` is written out of small ops (pow, mean, add, rsqrt, mul, mul) on the CPU, and
autograd keeps and differentiates each one: for the queries and keys of the speedrun model
(`qk_norm`, with an RMSNorm before every block) that was a fifth of a bf16 training step at
two threads (docs/BENCHMARKS.md). Here forward keeps x and the per-row 1/rms, and backward
computes the input gradient in one formula,

    dx = r * (g * w - x_hat * mean(g * w * x_hat)),  x_hat = x * r,  r = 1 / rms(x),

the weight gradient as sum(g * x_hat) over the rows. The arithmetic runs in float32 (float64 for
float64 x), and y comes back in x's dtype, as `F.rms_norm` gives.
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
        y = xf * r
        if weight is not None:
            y = y.mul_(weight.to(xf.dtype))
        ctx.save_for_backward(x, r, weight)
        return y.to(x.dtype)

    @staticmethod
    @once_differentiable  # a second derivative is refused (F.rms_norm has one)
    def backward(ctx, grad):
        x, r, weight = ctx.saved_tensors
        x_hat = x.to(r.dtype) * r  # a new tensor: x itself when it is float32
        g = grad.to(r.dtype)  # grad itself when float32: not written in place then
        grad_weight = None
        if weight is not None and ctx.needs_input_grad[1]:
            rows = (g * x_hat).reshape(-1, x_hat.size(-1))
            grad_weight = rows.sum(dim=0).to(weight.dtype)
        if weight is not None:
            w = weight.to(g.dtype)
            g = g.mul_(w) if g is not grad else g * w
        dot = (g * x_hat).mean(dim=-1, keepdim=True)
        grad_x = (g - x_hat.mul_(dot)).mul_(r)
        return grad_x.to(x.dtype), grad_weight, None


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
