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
- Under autocast the three matmuls (logits, gradient of `h`, gradient of `weight`) run in the
  autocast dtype, with `h` and `weight` cast once per call rather than once per chunk; the
  softmax, the loss and the sum of the chunks' weight gradients are float32. Only the
  weight gradient's product stays fp32 under fp16, whose range a sum over many rows could
  exceed.
- On a CPU with bf16 or fp16 logits, each chunk's loss and gradient come from one function
  compiled with `torch.compile` (`_chunk_loss_and_grad`): it reads the reduced-precision
  logits once and writes the gradient once, where the eager ops pass over a float32 copy
  several times (3x faster than the eager ops of the time at GPT-2's vocabulary; those were
  a quarter of a bf16 124M step on a CPU with AMX, docs/BENCHMARKS.md). Float32 logits, small
  chunks and a machine where compiling cannot work take the eager ops
  (`_chunk_loss_and_grad_eager`), which compute the same values; a kernel that fails to
  build falls back to them once, with a warning. A forward that is itself being compiled
  takes the functional form, which its own graph fuses.
- `linear_cross_entropy` is the entry point: `reduction="sum"` as above, `"mean"` divides by
  the number of valid targets (at least 1) outside the function, so autograd carries the
  1 / count into `grad_loss`.
"""

from __future__ import annotations

import functools
import itertools
import math
import warnings
from collections.abc import Callable

import torch

IGNORE_INDEX = -100  # F.cross_entropy's default ignore_index

# Chunks from this many logits up take the compiled kernel: below it a chunk's eager passes
# cost less than the compile (a few seconds, once per process and vocabulary size).
COMPILED_CHUNK_MIN_ELEMENTS = 2**22


class LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of `h @ weight.T` against `targets` (-100 ignored), in row chunks.

    The plain path materialises the (N, vocab) logits, a log-softmax of the same size, and in
    backward a zero-filled gradient of that size again: with GPT-2's 50257-word vocabulary that
    traffic dominates a small model's step on a CPU. Here each chunk's logits are turned into
    their loss and their gradient (softmax minus one-hot) while they are at hand, so nothing of
    size (N, vocab) is ever kept; backward only scales the stored gradients, once.
    """

    @staticmethod
    def forward(ctx, h, weight, targets, chunk_rows, vocab):
        compute = _compute_dtype(h, weight)
        w, hh = weight.to(compute), h.to(compute)  # one cast each, not one per chunk
        valid = (targets != IGNORE_INDEX).to(torch.float32)
        targets = targets.clamp(min=0)
        # the fewest chunks of at most chunk_rows, within a row of each other in size: 768 rows
        # at most 667 a chunk go as 384 + 384, not 667 + 101, whose small products made the
        # fp32 step of bench_train's small shape 11% slower at one thread
        n = h.shape[0]
        pieces = max(1, math.ceil(n / chunk_rows))
        bounds = [n * i // pieces for i in range(pieces + 1)]
        rows = math.ceil(n / pieces)
        big = rows * weight.shape[0] >= COMPILED_CHUNK_MIN_ELEMENTS  # else not worth compiling
        compiled = _compiled_chunk_loss_and_grad(h.device, compute) if big else None
        grad_h = torch.empty(h.shape, dtype=torch.float32, device=h.device)
        grad_w = None  # float32: the chunks' products are summed at full precision
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        # one logits buffer for every chunk: a fresh (rows, vocab) block each, made while the
        # last chunk's gradient was still alive, doubled the peak and made bench_train's small
        # fp32 step 2-5% slower
        buffer = torch.empty(rows, w.shape[0], dtype=compute, device=h.device)
        for s, e in itertools.pairwise(bounds):
            hc, tc, vc = hh[s:e], targets[s:e], valid[s:e]
            logits = torch.mm(hc, w.t(), out=buffer[: e - s])  # in the matmul dtype
            if vocab < w.shape[0]:  # padding rows (pad_vocab): probability 0, gradient 0
                logits[:, vocab:] = -math.inf
            logits_of = functools.partial(_rows_logits, hc, w, vocab)  # for underflowing rows
            if torch.compiler.is_compiling():  # (compiled is None then) its graph fuses this form
                loss, p = _chunk_loss_and_grad(logits, tc, vc, compute)
            else:
                kernel = compiled or _chunk_loss_and_grad_eager
                loss, p = kernel(logits, tc, vc, compute, logits_of)
            total += loss
            grad_h[s:e] = p @ w
            if compute == torch.bfloat16:  # fp32's range: a bf16 product, summed in float32
                part = p.t() @ hc
                grad_w = part.float() if grad_w is None else grad_w.add_(part)
            else:  # float32, or fp16, whose range a sum over many rows could overflow
                pf, hf = p.float(), hc.float()
                with torch.autocast(h.device.type, enabled=False):  # fp32 under fp16 too
                    grad_w = pf.t() @ hf if grad_w is None else grad_w.addmm_(pf.t(), hf)
            del logits, p  # float32's gradient is the buffer itself, the next chunk's logits
        ctx.grads = (grad_h, grad_w)
        ctx.dtypes = (h.dtype, weight.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_loss):
        if ctx.grads is None:
            raise RuntimeError(
                "LinearCrossEntropy's gradients are computed in forward and handed over once; "
                "a second backward through the same loss needs a new forward."
            )
        (grad_h, grad_w), ctx.grads = ctx.grads, None
        h_dtype, w_dtype = ctx.dtypes
        scale = grad_loss.float()  # 1/count, the loss scale: applied in float32, then cast
        # in place: these buffers are ours alone, and a (vocab, C) copy costs as much as a pass
        grad_h, grad_w = grad_h.mul_(scale).to(h_dtype), grad_w.mul_(scale).to(w_dtype)
        return grad_h, grad_w, None, None, None


def _rows_logits(
    h: torch.Tensor, weight: torch.Tensor, vocab: int, rows: torch.Tensor
) -> torch.Tensor:
    """The logits of the rows of `h` that the boolean mask `rows` picks, over the first
    `vocab` rows of `weight` (the rest are padding)."""
    return h[rows] @ weight[:vocab].t()


def _chunk_loss_and_grad(
    logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, out_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """A chunk's summed loss (float32) and the gradient of that sum with respect to its
    logits, softmax - one_hot on valid rows, in `out_dtype`: the form `torch.compile` fuses
    into one read of the logits and one write of the gradient. Every value in [-1, 1]; the
    one-hot comes off in float32 (p - 1 for p near 1 would lose its digits in bf16)."""
    logp = torch.log_softmax(logits, dim=-1, dtype=torch.float32)
    loss = -(logp.gather(1, targets[:, None]).squeeze(1) * valid).sum()
    probs = logp.exp()
    one_hot = torch.arange(logits.size(1), device=logits.device)[None, :] == targets[:, None]
    grad = torch.where(one_hot, probs - 1.0, probs) * valid[:, None]
    return loss, grad.to(out_dtype)


def _chunk_loss_and_grad_eager(
    logits: torch.Tensor,
    targets: torch.Tensor,
    valid: torch.Tensor,
    out_dtype: torch.dtype,
    logits_of: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`_chunk_loss_and_grad` for eager PyTorch, in place: the same values in fewer passes
    than the functional form takes without a compiler (tests hold the two equal). Float32
    `logits` are overwritten (the gradient comes back in their memory). `logits_of(rows)`
    gives the chunk's logits again for the rows of a boolean mask: on a CPU, the loss of a
    row whose target's probability underflows is taken from them (without it, inf)."""
    if logits.device.type == "cpu":
        # one row-wise softmax, reading the (maybe bf16) logits and writing float32: one exp
        # a logit, where a log-softmax and then exp took two (the second exp pass was 4-7 ms
        # of a chunk of 384 rows at GPT-2's vocabulary, about a twentieth of bench_train's
        # small fp32 step)
        probs = _rowwise_float32(torch.softmax, logits)
        picked = probs.gather(1, targets[:, None]).squeeze(1)  # each target's probability
        # ignored rows (valid 0) weigh nothing: their -log p may be inf, and inf * 0 is NaN
        losses = picked.log().neg_().masked_fill_(valid == 0, 0.0)
        # float32 keeps every digit down to 1.2e-38 (a loss of 87 nats); from 1e-30 (69 nats)
        # on, with a margin, a row's loss comes from its logits again, exactly. The check
        # reads one flag back from the tensors, free on a CPU, a sync on an accelerator.
        lost = (picked < 1e-30) & (valid > 0)
        if logits_of is not None and bool(lost.any()):
            again = logits_of(lost).float()
            picked_logit = again.gather(1, targets[lost][:, None])[:, 0]
            losses[lost] = torch.logsumexp(again, -1) - picked_logit
        loss = losses.dot(valid)
        # most chunks have no ignored row, and then no pass over them to mask one (a sixth of
        # a float32 chunk's time at GPT-2's vocabulary)
        masked = not bool(valid.all())
    else:  # no read-back a chunk on an accelerator: a log-softmax (exact), then its exp
        logp = _rowwise_float32(torch.log_softmax, logits)
        loss = -logp.gather(1, targets[:, None]).squeeze(1).dot(valid)
        probs, masked = logp.exp_(), True
    probs[torch.arange(len(targets), device=targets.device), targets] -= 1.0
    if not masked:
        return loss, probs.to(out_dtype)
    if out_dtype == torch.float32:  # masking (and the cast) in one pass
        return loss, probs.mul_(valid[:, None])
    return loss, torch.mul(probs, valid[:, None], out=torch.empty_like(probs, dtype=out_dtype))


def _rowwise_float32(fn: Callable[..., torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
    """`fn` (softmax or log-softmax) over each row, in float32: float32 logits in place (no
    second buffer of their size to fill), others read once into a new float32 tensor."""
    if logits.dtype == torch.float32:
        return fn(logits, dim=-1, out=logits)
    return fn(logits, dim=-1, dtype=torch.float32)


def _compiled_chunk_loss_and_grad(device: torch.device, compute: torch.dtype):
    """The compiled `_chunk_loss_and_grad` where it pays and can work: a CPU, bf16/fp16
    logits, a C++ compiler at hand, and not inside a forward being compiled (whose graph
    fuses the functional form itself). Else None."""
    if device.type != "cpu" or compute == torch.float32 or torch.compiler.is_compiling():
        return None
    return _compiled_for_cpu()


class _CompiledOrEager:
    """The compiled kernel, or the eager ops from the first time it fails to build (a found
    compiler that cannot compile, say): the same values either way, with one warning."""

    def __init__(self, compiled):
        self.compiled, self.failed = compiled, False

    def __call__(self, logits, targets, valid, out_dtype, logits_of=None):
        args = (logits, targets, valid, out_dtype)  # the compiled form's loss cannot underflow
        if not self.failed:
            try:
                return self.compiled(*args)
            except Exception as e:  # inductor's errors have no common base class
                self.failed = True
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                warnings.warn(
                    f"the compiled loss kernel could not be built ({type(e).__name__}: "
                    f"{first[:200]}); the loss runs on the eager ops, with the same values, "
                    "slower",
                    stacklevel=2,
                )
        return _chunk_loss_and_grad_eager(*args, logits_of)


@functools.cache
def _compiled_for_cpu():
    from mygpt2.runtime import compile_problem  # torch.compile's needs, checked once

    if compile_problem(torch.device("cpu")) is not None:
        return None
    # dynamic: the last chunk's rows differ, and one kernel serves every row count
    return _CompiledOrEager(torch.compile(_chunk_loss_and_grad, dynamic=True))


def _compute_dtype(h: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The matmuls' dtype: autocast's when it is on (bf16 or fp16), else the weight's."""
    if torch.is_autocast_enabled(h.device.type):
        return torch.get_autocast_dtype(h.device.type)
    return torch.promote_types(h.dtype, weight.dtype)


def linear_cross_entropy(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    chunk_rows: int,
    reduction: str = "mean",
    vocab: int | None = None,
) -> torch.Tensor:
    """Cross-entropy of `h @ weight.T` (h: (N, C), weight: (rows, C), targets: (N,), -100
    ignored), `"sum"` over the valid targets or their `"mean"`, without keeping the logits.
    With `vocab`, only the first `vocab` rows of `weight` are the vocabulary; the rest
    (`pad_vocab`'s padding) get probability 0 and a zero gradient."""
    vocab = weight.shape[0] if vocab is None else vocab
    total = LinearCrossEntropy.apply(h, weight, targets, chunk_rows, vocab)
    if reduction == "sum":
        return total
    if reduction != "mean":
        raise ValueError(f"reduction must be 'mean' or 'sum', not {reduction!r}")
    return total / (targets != IGNORE_INDEX).sum().clamp(min=1)
