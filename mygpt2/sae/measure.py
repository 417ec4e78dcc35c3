"""How good an SAE is, with the field's definitions (SAELens's evals, Gao et al. 2024).

Over N tokens with activations x (N, d) at the hook, reconstructions x_hat = sae(x) and
feature activations f = sae.encode(x):
- `l0`: the mean number of non-zero features per token, mean_t |{i: f_ti != 0}|.
- `mse`: the mean squared error per element, sum ||x - x_hat||^2 / (N d).
- `explained_variance`: 1 - sum_t ||x_t - x_hat_t||^2 / sum_t ||x_t - mean(x)||^2, the mean
  taken over the same N tokens (1: perfect; 0: no better than the mean; below 0: worse).
- `dead_fraction`: the fraction of features that are zero on every one of the N tokens (the
  window); `dead_window_tokens` says how many tokens that was.
- losses, each the model's own next-token cross-entropy (its forward through
  `model.run_with_hooks`, then cross-entropy of the logits, mean over predicted tokens):
  `loss_clean` (no hook), `loss_spliced` (the hook's activation replaced by x_hat, through
  `mygpt2.sae.splice`), `loss_zero_ablated` (replaced by zeros), `loss_mean_ablated`
  (replaced by mean(x), the mean over the N tokens, at every position);
  `loss_delta` = loss_spliced - loss_clean;
  `ce_loss_recovered_zero` = (L_zero - L_spliced) / (L_zero - L_clean), and
  `ce_loss_recovered_mean` the same with L_mean: 1 means splicing costs nothing, 0 means it
  is as bad as the ablation. Small models often lose little to ablations (a LayerNorm after
  the hook rescales what comes in), so the ratio alone says little: read it beside
  `loss_delta` and a random SAE's figures.

Sums are kept in float64 across batches, so a figure over N tokens does not depend on how
they were batched.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn import functional as F

from mygpt2.errors import MyGPT2Error
from mygpt2.sae.model import SAE
from mygpt2.sae.splice import check_fits, splice, to_rows


def next_token_loss(logits: torch.Tensor, idx: torch.Tensor) -> tuple[float, int]:
    """(summed cross-entropy, count) of predicting idx[:, 1:] from logits[:, :-1]."""
    pred = logits[:, :-1].float().reshape(-1, logits.shape[-1])
    loss = F.cross_entropy(pred, idx[:, 1:].reshape(-1), reduction="sum")
    return float(loss), pred.shape[0]


@dataclass
class ReconstructionSums:
    """Running sums over batches of (x, x_hat, f), in float64."""

    n: int = 0
    d: int = 0
    sq_err: float = 0.0
    sq_norm: float = 0.0
    active: float = 0.0
    total: torch.Tensor | None = None  # sum of x (d,)
    fired: torch.Tensor | None = None  # (d_sae,) bool: fired on some token

    def add(self, x: torch.Tensor, x_hat: torch.Tensor, f: torch.Tensor) -> None:
        x64, err = x.double(), (x.double() - x_hat.double())
        self.n += x.shape[0]
        self.d = x.shape[1]
        self.sq_err += float(err.pow(2).sum())
        self.sq_norm += float(x64.pow(2).sum())
        self.active += float((f != 0).sum())
        total = x64.sum(0)
        fired = (f != 0).any(0)
        self.total = total if self.total is None else self.total + total
        self.fired = fired if self.fired is None else self.fired | fired

    def mean(self) -> torch.Tensor:
        """mean(x) over the tokens added so far (d,)."""
        if self.total is None:
            raise MyGPT2Error("no tokens were measured.")
        return self.total / self.n

    def as_dict(self) -> dict[str, float]:
        if self.n == 0 or self.total is None or self.fired is None:
            return {}
        # sum ||x - mean||^2 = sum ||x||^2 - n ||mean||^2
        var = self.sq_norm - self.n * float(self.mean().pow(2).sum())
        return {
            "l0": self.active / self.n,
            "mse": self.sq_err / (self.n * self.d),
            "explained_variance": 1.0 - self.sq_err / var if var > 0 else math.nan,
            "dead_fraction": float((~self.fired).double().mean()),
            "dead_window_tokens": self.n,
        }


def batch_stats(x: torch.Tensor, x_hat: torch.Tensor, l0: float) -> dict[str, float]:
    """One batch's figures (what training logs each step): `l0` as given, and the MSE and
    explained variance of rows x against x_hat, as defined above."""
    x64, err = x.detach().double(), (x.detach().double() - x_hat.detach().double())
    sq_err = float(err.pow(2).sum())
    var = float((x64 - x64.mean(0)).pow(2).sum())
    return {
        "l0": l0,
        "mse": sq_err / x.numel(),
        "explained_variance": 1.0 - sq_err / var if var > 0 else math.nan,
    }


@dataclass
class Evaluation:
    """What `evaluate` measured; `as_dict()` is what `mygpt2 sae eval --json` writes."""

    recon: dict[str, float]
    losses: dict[str, float]
    tokens: int
    predicted: int
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        L = self.losses
        clean, spliced = L["loss_clean"], L["loss_spliced"]

        def recovered(ablated: float) -> float:
            gap = ablated - clean
            return (ablated - spliced) / gap if gap != 0 else math.nan

        return {
            **self.recon,
            **L,
            "loss_delta": spliced - clean,
            "ce_loss_recovered_zero": recovered(L["loss_zero_ablated"]),
            "ce_loss_recovered_mean": recovered(L["loss_mean_ablated"]),
            "tokens": self.tokens,
            "predicted_tokens": self.predicted,
            **self.extra,
        }


def _capture(store: list[torch.Tensor]):
    def hook(x: torch.Tensor, _name: str) -> None:
        store.append(x)

    return hook


def _constant(value: torch.Tensor):
    """A hook that replaces the activation by `value` (one token's vector) at every token."""

    def hook(x: torch.Tensor, _name: str) -> torch.Tensor:
        flat = value.to(device=x.device, dtype=x.dtype).expand(*x.shape[:2], value.shape[-1])
        return flat.reshape(x.shape).contiguous()

    return hook


@torch.no_grad()
def evaluate(model: Any, sae: SAE, batches: Iterable[torch.Tensor]) -> Evaluation:
    """Every figure of the module docstring over the token windows `batches` ((B, T) each)."""
    check_fits(model, sae)
    batches = list(batches)
    if not batches:
        raise MyGPT2Error("no token windows to evaluate the SAE on.")
    name = sae.cfg.hook_name
    sums = ReconstructionSums()
    loss = {"loss_clean": 0.0, "loss_spliced": 0.0, "loss_zero_ablated": 0.0}
    count = 0
    device = sae.W_dec.device
    for idx in batches:
        got: list[torch.Tensor] = []
        logits = model.run_with_hooks(idx, fwd_hooks=[(name, _capture(got))])
        total, n = next_token_loss(logits, idx)
        loss["loss_clean"] += total
        x = to_rows(got[0]).reshape(-1, sae.cfg.d_in).to(device)
        f = sae.encode(x)
        sums.add(x, sae.decode(f), f)
        with splice(model, sae):
            loss["loss_spliced"] += next_token_loss(model.run_with_hooks(idx), idx)[0]
        zero = torch.zeros(sae.cfg.d_in)
        logits = model.run_with_hooks(idx, fwd_hooks=[(name, _constant(zero))])
        loss["loss_zero_ablated"] += next_token_loss(logits, idx)[0]
        count += n
    mean = sums.mean().float()
    ablated = 0.0
    for idx in batches:  # the mean is known only after the first pass
        logits = model.run_with_hooks(idx, fwd_hooks=[(name, _constant(mean))])
        ablated += next_token_loss(logits, idx)[0]
    loss["loss_mean_ablated"] = ablated
    losses = {k: v / count for k, v in loss.items()}
    return Evaluation(sums.as_dict(), losses, sums.n, count)
