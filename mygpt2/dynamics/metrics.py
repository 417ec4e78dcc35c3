"""Metrics of one model that, measured on every snapshot of a run, show how it learned.

    scores = induction_score(model)        # (n_layers, n_heads), 1: a perfect induction head
    scores = prev_token_score(model)       # (n_layers, n_heads), 1: attends to the token before
    losses = lens_loss(model, windows)     # (n_layers,), the logit lens's loss after each block
    gain = icl_score(model, windows)       # loss at token 500 minus loss at token 50 (T > 500)

Definitions (as in Olsson et al., "In-context learning and induction heads", 2022):
- induction: a random sequence of `half` tokens shown twice; a head's score is its mean
  attention, from each token of the second half, to the token that followed the same token
  in the first half (the one an induction head copies). Uniform attention scores the mean of
  1/(i+1) over the queries: near 0.01 for half = 50, near 0.04 for half = 16.
- prev_token: a head's mean attention from each token to the one just before it, on random
  tokens.
  Both draw their random tokens from the tokens of the run's text when `measure` has it (a
  token never seen in training would hide what the heads do; see `measure`).
- icl: how much better the model predicts token 500 of a text than token 50; negative when
  context helps. It needs T of at least 500 (`ContextTooShortError` otherwise).
`METRICS` names them for `mygpt2 inspect series`, with `val_loss` (the mean loss on text).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F

from mygpt2.errors import MyGPT2Error
from mygpt2.evaluation.text import batches_nll
from mygpt2.inspect.analyses import attention, evaluating, unembed
from mygpt2.model import GPT

ICL_LATE, ICL_EARLY = 500, 50  # token positions (0-based) compared by icl_score


class ContextTooShortError(MyGPT2Error):
    """A metric needs more context than the model's T."""


def random_tokens(
    vocab_size: int, batch: int, length: int, seed: int = 0, pool: torch.Tensor | None = None
) -> torch.Tensor:
    """(batch, length) random token ids, drawn from `pool` (ids) or else the whole vocabulary,
    each row without repeats when there are enough ids (a repeat inside the first half would
    give an induction head two earlier occurrences)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.arange(vocab_size) if pool is None else pool.flatten().unique()
    if len(ids) >= length:
        return torch.stack(
            [ids[torch.randperm(len(ids), generator=g)[:length]] for _ in range(batch)]
        )
    return ids[torch.randint(0, len(ids), (batch, length), generator=g)]


def induction_score(
    model: GPT, half: int = 50, batch: int = 8, seed: int = 0, pool: torch.Tensor | None = None
) -> torch.Tensor:
    """(n_layers, n_heads): each head's mean attention from the second copy of a repeated
    random sequence to the token after the earlier occurrence (1: a perfect induction head).
    The tokens come from `pool` when given (see `measure`). `half` shrinks to T // 2 on a
    shorter context, and to the number of ids in `pool`."""
    half = min(half, model.config.T // 2)
    if pool is not None:
        half = min(half, len(pool.unique()))
    if half < 2:
        raise ContextTooShortError(
            f"induction needs T of at least 4; this model's T is {model.config.T}."
        )
    first = random_tokens(model.config.vocab_size, batch, half, seed, pool)
    patterns = attention(model, torch.cat([first, first], dim=1))  # (L, B, H, 2h, 2h)
    queries = torch.arange(half, 2 * half)
    keys = queries - half + 1  # the token after the query's earlier occurrence
    return patterns[..., queries, keys].mean(dim=(1, 3))


def prev_token_score(
    model: GPT, length: int = 64, batch: int = 8, seed: int = 0, pool: torch.Tensor | None = None
) -> torch.Tensor:
    """(n_layers, n_heads): each head's mean attention from a token to the one before it, on
    random tokens (from `pool` when given; `length` shrinks to T)."""
    length = min(length, model.config.T)
    if length < 2:
        raise ContextTooShortError(
            f"prev_token needs T of at least 2; this model's T is {model.config.T}."
        )
    tokens = random_tokens(model.config.vocab_size, batch, length, seed, pool)
    patterns = attention(model, tokens)
    queries = torch.arange(1, length)
    return patterns[..., queries, queries - 1].mean(dim=(1, 3))


def _check_windows(model: GPT, windows: torch.Tensor) -> None:
    if windows.dim() != 2 or windows.size(1) < 2:
        raise MyGPT2Error(f"windows of text are (B, T + 1) token ids; got {tuple(windows.shape)}.")
    if windows.size(1) - 1 > model.config.T:
        raise MyGPT2Error(
            f"windows of {windows.size(1)} tokens are longer than T + 1 = {model.config.T + 1}."
        )


def val_loss(model: GPT, windows: torch.Tensor, batch: int = 8) -> torch.Tensor:
    """(1,): the mean loss (nats per token) of predicting each token of `windows` (B, t + 1)
    from the ones before it, within its window: training's validation loss
    (`evaluation.batches_nll`)."""
    _check_windows(model, windows)
    batches = [(rows[:, :-1], rows[:, 1:]) for rows in windows.split(batch)]
    nats, count = batches_nll(model, batches)
    return (nats / count).float().cpu().reshape(1)


def lens_loss(model: GPT, windows: torch.Tensor, batch: int = 4) -> torch.Tensor:
    """(n_layers,): the loss of the logit lens after each block on `windows` (B, t + 1); the
    last block's is the model's own loss."""
    _check_windows(model, windows)
    total = torch.zeros(model.config.n_layers)
    with evaluating(model):
        for rows in windows.split(batch):
            x, y = rows[:, :-1], rows[:, 1:]
            _, cache = model.run_with_cache(x, names="blocks.*.hook_resid_post")
            for layer in range(model.config.n_layers):
                logits = unembed(model, cache[f"blocks.{layer}.hook_resid_post"]).float()
                loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum")
                total[layer] += loss.cpu()
    return total / windows[:, 1:].numel()


def icl_score(model: GPT, windows: torch.Tensor, batch: int = 4) -> torch.Tensor:
    """(1,): the loss at token 500 minus the loss at token 50 (0-based positions in each
    window), averaged over `windows`; negative when the longer context helps."""
    if model.config.T < ICL_LATE:
        raise ContextTooShortError(
            f"icl compares the loss at token {ICL_LATE} with the loss at token {ICL_EARLY}, so it "
            f"needs T of at least {ICL_LATE}; this model's T is {model.config.T}."
        )
    _check_windows(model, windows)
    if windows.size(1) <= ICL_LATE:
        raise ContextTooShortError(f"icl needs windows of more than {ICL_LATE} tokens.")
    late, early = [], []
    with evaluating(model):
        for rows in windows.split(batch):
            x = rows[:, :ICL_LATE]  # predicts tokens 1 .. 500
            logits = model(x)[0].float()
            losses = F.cross_entropy(
                logits.transpose(1, 2), rows[:, 1 : ICL_LATE + 1], reduction="none"
            )
            late.append(losses[:, ICL_LATE - 1])
            early.append(losses[:, ICL_EARLY - 1])
    return (torch.cat(late).mean() - torch.cat(early).mean()).reshape(1)


@dataclass(frozen=True)
class Metric:
    """A series metric: how to measure it, whether it reads text, how to label its values."""

    measure: Callable[..., torch.Tensor]
    reads_text: bool
    ylabel: str
    labels: Callable[[Any], list[str]]  # model config -> one label per value


def _heads(cfg: Any) -> list[str]:
    return [f"L{layer}H{h}" for layer in range(cfg.n_layers) for h in range(cfg.n_heads)]


METRICS: dict[str, Metric] = {
    "val_loss": Metric(val_loss, True, "validation loss (nats/token)", lambda c: ["val_loss"]),
    "induction": Metric(induction_score, False, "induction score", _heads),
    "prev_token": Metric(prev_token_score, False, "previous-token score", _heads),
    "lens_loss": Metric(
        lens_loss,
        True,
        "logit-lens loss (nats/token)",
        lambda c: [f"after L{i}" for i in range(c.n_layers)],
    ),
    "icl": Metric(icl_score, True, f"loss at token {ICL_LATE} - at {ICL_EARLY}", lambda c: ["icl"]),
}


def measure(model: GPT, name: str, windows: torch.Tensor | None = None) -> torch.Tensor:
    """Metric `name` of `model` as a flat tensor, one value per label of `METRICS[name]`.

    The random-token metrics (induction, prev_token) draw their tokens from those in
    `windows` when given. A token the run never saw keeps its initial embedding, so its
    copies look alike to the model: with a byte-level vocabulary, where most of the 256
    bytes never occur in text, random bytes hide an induction head that copies text well.
    """
    if name not in METRICS:
        raise MyGPT2Error(f"unknown metric '{name}'; choose from {', '.join(METRICS)}.")
    metric = METRICS[name]
    if metric.reads_text:
        if windows is None:
            raise MyGPT2Error(f"metric '{name}' needs windows of text.")
        return metric.measure(model, windows).flatten()
    return metric.measure(model, pool=windows).flatten()
