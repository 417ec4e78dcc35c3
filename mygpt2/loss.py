"""The training loss without the logits: a fused, chunked linear + cross-entropy.

With GPT-2's 50257-word vocabulary, the (tokens, vocab) logits, their log-softmax and their
gradient dominate a small model's step on a CPU. `LinearCrossEntropy` never keeps them: each
chunk of rows is turned into its loss and its gradient while it is at hand.

Design choices:
- The function computes the *sum* of the per-token losses, and forward stores the gradient
  of that sum: per row softmax minus one-hot, whose values lie in [-1, 1]. Such values are
  safe in fp16 and bf16, so the matmuls that turn them into the gradients of `h` and `weight`
  may run in the autocast dtype. Dividing by the token count there instead (a mean) would
  put values like 1 / (vocab * tokens) into an fp16 matmul, where they flush to zero.
- Every scale -- 1 / count for a mean, GradScaler's loss scale, a training step's
  1 / (tokens in the optimizer step) -- reaches `backward` as `grad_loss` and is applied in
  float32 to the float32 gradients, which are cast to the inputs' dtypes only at the end.
- `linear_cross_entropy` is the entry point: `reduction="sum"` as above, `"mean"` divides by
  the number of valid targets (at least 1) outside the function, so autograd carries the
  1 / count into `grad_loss`.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100  # F.cross_entropy's default ignore_index


class LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of `h @ weight.T` against `targets` (-100 ignored), in row chunks.

    The plain path materialises the (N, vocab) logits, a log-softmax of the same size, and in
    backward a zero-filled gradient of that size again: with GPT-2's 50257-word vocabulary that
    traffic dominates a small model's step on a CPU. Here each chunk's logits are turned into
    their loss and their gradient (softmax minus one-hot) while they are at hand, so nothing of
    size (N, vocab) is ever kept; backward only scales the stored gradients.
    """

    @staticmethod
    def forward(ctx, h, weight, targets, chunk_rows):
        valid = targets != IGNORE_INDEX
        grad_h = torch.empty(h.shape, dtype=torch.float32, device=h.device)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        for s in range(0, h.shape[0], chunk_rows):
            hc, tc, vc = (
                h[s : s + chunk_rows],
                targets[s : s + chunk_rows],
                valid[s : s + chunk_rows],
            )
            logits = (hc @ weight.t()).float()  # (rows, vocab), in the autocast dtype if any
            tc = tc.clamp(min=0)
            picked = logits.gather(1, tc[:, None]).squeeze(1)
            # one exp pass, in place: e = exp(logits - max), loss = max + log(sum e) - picked
            top = logits.amax(dim=-1, keepdim=True)
            e = logits.sub_(top).exp_()
            sum_e = e.sum(dim=-1, keepdim=True)
            row_valid = vc.to(torch.float32)
            total += ((top + sum_e.log()).squeeze(1) - picked).mul(row_valid).sum()
            # gradient of the summed loss: softmax - one_hot on valid rows, every value in [-1, 1]
            probs = e.mul_(row_valid[:, None] / sum_e)
            probs[torch.arange(len(tc), device=tc.device), tc] -= row_valid
            # the matmul may run in fp16/bf16 (autocast): its inputs are bounded, and the product
            # is kept in float32
            grad_h[s : s + chunk_rows] = probs.to(weight.dtype) @ weight
            grad_w.addmm_(probs.t(), hc.float())
        ctx.save_for_backward(grad_h, grad_w)
        ctx.dtypes = (h.dtype, weight.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w = ctx.saved_tensors
        h_dtype, w_dtype = ctx.dtypes
        scale = grad_loss.float()  # 1/count, the loss scale: applied in float32, then cast
        return (grad_h * scale).to(h_dtype), (grad_w * scale).to(w_dtype), None, None


def linear_cross_entropy(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    chunk_rows: int,
    reduction: str = "mean",
) -> torch.Tensor:
    """Cross-entropy of `h @ weight.T` (h: (N, C), weight: (vocab, C), targets: (N,), -100
    ignored), `"sum"` over the valid targets or their `"mean"`, without keeping the logits."""
    total = LinearCrossEntropy.apply(h, weight, targets, chunk_rows)
    if reduction == "sum":
        return total
    if reduction != "mean":
        raise ValueError(f"reduction must be 'mean' or 'sum', not {reduction!r}")
    return total / (targets != IGNORE_INDEX).sum().clamp(min=1)
