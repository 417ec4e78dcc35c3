"""The training loss without the logits: a fused, chunked linear + cross-entropy.

With GPT-2's 50257-word vocabulary, the (tokens, vocab) logits, their log-softmax and their
gradient dominate a small model's step on a CPU. `LinearCrossEntropy` never keeps them: each
chunk of rows is turned into its loss and its gradient while it is at hand.
"""

from __future__ import annotations

import torch


class LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of `h @ weight.T` against `targets` (-100 ignored), in row chunks.

    The plain path materialises the (N, vocab) logits, a log-softmax of the same size, and in
    backward a zero-filled gradient of that size again: with GPT-2's 50257-word vocabulary that
    traffic dominates a small model's step on a CPU. Here each chunk's logits are turned into
    their loss and their gradient (softmax minus one-hot) while they are at hand, so nothing of
    size (N, vocab) is ever kept; backward only scales the stored gradients.
    """

    @staticmethod
    def forward(ctx, h, weight, targets, chunk_rows):
        valid = targets != -100
        count = valid.sum().clamp(min=1).to(torch.float32)
        grad_h = torch.empty_like(h)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        for s in range(0, h.shape[0], chunk_rows):
            hc, tc, vc = (
                h[s : s + chunk_rows],
                targets[s : s + chunk_rows],
                valid[s : s + chunk_rows],
            )
            logits = (hc @ weight.t()).float()  # (rows, vocab)
            tc = tc.clamp(min=0)
            picked = logits.gather(1, tc[:, None]).squeeze(1)
            # one exp pass, in place: e = exp(logits - max), loss = max + log(sum e) - picked
            top = logits.amax(dim=-1, keepdim=True)
            e = logits.sub_(top).exp_()
            sum_e = e.sum(dim=-1, keepdim=True)
            total += ((top + sum_e.log()).squeeze(1) - picked).mul(vc).sum()
            # gradient of the mean loss: (softmax - one_hot) * weight, weight = valid / count
            row_weight = (vc / count)[:, None]
            probs = e.mul_(row_weight / sum_e)
            probs[torch.arange(len(tc), device=tc.device), tc] -= row_weight.squeeze(1)
            grad_h[s : s + chunk_rows] = (probs.to(weight.dtype) @ weight).to(h.dtype)
            grad_w.addmm_(probs.t(), hc.float())
        ctx.save_for_backward(grad_h, grad_w.to(weight.dtype))
        return total / count

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_loss, grad_w * grad_loss, None, None
