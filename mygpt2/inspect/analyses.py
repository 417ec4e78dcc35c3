"""The analyses: plain functions on a model and token ids that return tensors.

Each runs the model in eval mode without gradients (its training flag is restored after) and
reads the activations it needs through the model's hook points (`mygpt2.hooks`), so what it
reports is exactly what the model computes.

- `logit_lens`: the final LayerNorm and the unembedding applied to each block's output
  (`resid_post`): what the model would predict if it stopped after each layer.
- `patch`: activation patching. Run the corrupt input with one clean activation put back (one
  layer and position, or one layer and head) and measure a metric of the logits: the places
  whose clean value restores the clean behaviour carry the information that matters.
- `attention`: every layer's and head's attention pattern.
- `direct_logit_attribution`: the logit of a token split into the terms that each head, MLP,
  embedding and bias add to the residual stream, each passed through the final LayerNorm with
  the scale that the forward used (the scale is the only non-linear part, and freezing it
  makes the split exact: the terms sum to the logit).
- `token_losses`: the loss (surprisal) of each token given the ones before it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F

from mygpt2.errors import MyGPT2Error
from mygpt2.hooks import as_tokens
from mygpt2.model import GPT

# patching sites: short name -> the block hook it patches
SITES = {
    "resid_pre": "hook_resid_pre",
    "resid_mid": "hook_resid_mid",
    "resid_post": "hook_resid_post",
    "attn_out": "hook_attn_out",
    "mlp_out": "hook_mlp_out",
    "z": "attn.hook_z",
}


@contextlib.contextmanager
def evaluating(model: GPT) -> Iterator[None]:
    """Eval mode and no gradients for the body; the model's training flag comes back after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def unembed(model: GPT, resid: torch.Tensor) -> torch.Tensor:
    """Logits (..., vocab_size) of residual-stream vectors: the final norm, then the model's
    own head (`GPT.head`, its softcap included)."""
    return model.head(model.transformer.ln_f(resid))


# ---------------------------------------------------------------------------------- logit lens
def logit_lens(model: GPT, idx: Any) -> torch.Tensor:
    """(n_layers, B, T, vocab_size): the logits of each block's output, `ln_final` and the
    unembedding applied to `blocks.{i}.hook_resid_post`. The last layer's are the model's own.

    Memory: n_layers * B * T * vocab floats (GPT-2 124M on 100 tokens: 240 MB)."""
    tokens = as_tokens(model, idx)
    with evaluating(model):
        _, cache = model.run_with_cache(tokens, names="blocks.*.hook_resid_post")
        return unembed(model, cache.stack("hook_resid_post"))


@dataclass
class LensTop:
    """The logit lens at one position: each layer's top-k tokens and, given a target, its rank."""

    ids: torch.Tensor  # (n_layers, k) token ids, most likely first
    probs: torch.Tensor  # (n_layers, k)
    target: int | None = None
    target_rank: torch.Tensor | None = None  # (n_layers,), 1 = the most likely token
    target_prob: torch.Tensor | None = None  # (n_layers,)


def lens_top_k(
    lens: torch.Tensor, k: int = 5, pos: int = -1, row: int = 0, target: int | None = None
) -> LensTop:
    """The top `k` tokens per layer at position `pos` of batch row `row` of a `logit_lens`
    result, and the rank and probability of `target` per layer."""
    if lens.dim() != 4:
        raise MyGPT2Error(f"expected a logit_lens result (L, B, T, V), got {tuple(lens.shape)}.")
    logits = lens[:, row, pos].float()  # (L, V)
    probs = logits.softmax(dim=-1)
    top = probs.topk(min(k, probs.size(-1)), dim=-1)
    out = LensTop(ids=top.indices, probs=top.values)
    if target is not None:
        if not 0 <= target < logits.size(-1):
            raise MyGPT2Error(f"target token {target} is outside the vocabulary.")
        chosen = logits[:, target : target + 1]
        out.target = target
        out.target_rank = (logits > chosen).sum(dim=-1) + 1
        out.target_prob = probs[:, target]
    return out


# -------------------------------------------------------------------------------- patching
def _site(site: str) -> str:
    short = site.removeprefix("attn.").removeprefix("hook_")
    if short not in SITES:
        raise MyGPT2Error(f"unknown patching site '{site}'; choose one of {', '.join(SITES)}.")
    return SITES[short]


def _number(value: Any, what: str) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise MyGPT2Error(
                f"{what} must return one number; it returned a tensor of shape "
                f"{tuple(value.shape)} (reduce it, e.g. with .mean())."
            )
        return value.item()
    try:
        return float(value)
    except (TypeError, ValueError):
        raise MyGPT2Error(f"{what} must return one number, not {type(value).__name__}.") from None


def patch(
    model: GPT,
    clean: Any,
    corrupt: Any,
    site: str,
    metric: Callable[[torch.Tensor], Any],
    batch_tokens: int = 8192,
) -> torch.Tensor:
    """Activation patching over every layer and position (residual sites: `resid_pre`,
    `resid_mid`, `resid_post`, `attn_out`, `mlp_out`), or every layer and head (`z`, a head's
    output at all positions): (n_layers, T) or (n_layers, n_heads).

    Cell (l, j) is `metric(logits)` of `corrupt` run with position (or head) j of layer l's
    activation taken from the `clean` run. `clean` and `corrupt` are token ids of the same shape;
    `metric` maps logits (B, T, vocab) to one number. Several patched copies of `corrupt` share a
    forward (up to `batch_tokens` tokens), and `metric` sees each copy's logits on their own."""
    clean, corrupt = as_tokens(model, clean), as_tokens(model, corrupt)
    if clean.shape != corrupt.shape:
        raise MyGPT2Error(
            f"clean and corrupt inputs must have the same shape to patch position by position: "
            f"clean is {tuple(clean.shape)}, corrupt {tuple(corrupt.shape)} (B, T)."
        )
    suffix = _site(site)
    by_head = suffix == "attn.hook_z"
    B, T = corrupt.shape
    n = model.config.n_heads if by_head else T
    grid = torch.empty(model.config.n_layers, n)
    copies = max(1, batch_tokens // (B * T))
    with evaluating(model):
        _, cache = model.run_with_cache(clean, names=f"blocks.*.{suffix}")
        for layer in range(model.config.n_layers):
            name = f"blocks.{layer}.{suffix}"
            source = cache[name]
            for first in range(0, n, copies):
                js = range(first, min(n, first + copies))

                def put(act: torch.Tensor, _name: str, js=js, source=source) -> torch.Tensor:
                    act = act.clone().view(len(js), *source.shape)  # one copy per patch
                    for c, j in enumerate(js):
                        if by_head:
                            act[c, :, :, j] = source[:, :, j]
                        else:
                            act[c, :, j] = source[:, j]
                    return act.view(len(js) * B, *source.shape[1:])

                logits = model.run_with_hooks(corrupt.repeat(len(js), 1), [(name, put)])
                for c, j in enumerate(js):
                    grid[layer, j] = _number(metric(logits[c * B : (c + 1) * B]), "metric")
    return grid


# ------------------------------------------------------------------------------- attention
def attention(model: GPT, idx: Any) -> torch.Tensor:
    """(n_layers, B, n_heads, T, T): each head's attention pattern (rows: queries, columns:
    keys; each row sums to 1 over the keys it may see)."""
    tokens = as_tokens(model, idx)
    with evaluating(model):
        _, cache = model.run_with_cache(tokens, names="blocks.*.attn.hook_pattern")
        return cache.stack("attn.hook_pattern")


# ------------------------------------------------------------------ direct logit attribution
@dataclass
class Attribution:
    """A logit split into the terms that sum to it (`values` per batch row)."""

    labels: list[
        str
    ]  # embed, pos_embed, L0H0 .. L0H{n-1}, L0 attn bias, L0 mlp, ..., ln_final bias
    values: torch.Tensor  # (n_terms, B)
    logit: torch.Tensor  # (B,) the model's logit of the token
    n_layers: int
    n_heads: int

    def heads(self) -> torch.Tensor:
        """(n_layers, n_heads, B): the heads' terms as a grid."""
        rows = [self.labels.index(f"L{layer}H0") for layer in range(self.n_layers)]
        return torch.stack([self.values[r : r + self.n_heads] for r in rows])

    def mlps(self) -> torch.Tensor:
        """(n_layers, B): the MLPs' terms."""
        return torch.stack(
            [self.values[self.labels.index(f"L{i} mlp")] for i in range(self.n_layers)]
        )


def direct_logit_attribution(model: GPT, idx: Any, token: Any, pos: int = -1) -> Attribution:
    """Each head's, MLP's, embedding's and bias's share of the logit of `token` (an id, or one
    per batch row) at position `pos`, through the final norm with the forward's own scale.
    The shares sum to the logit (up to float rounding)."""
    tokens = as_tokens(model, idx)
    B, T = tokens.shape
    if not -T <= pos < T:
        raise MyGPT2Error(f"position {pos} is outside the {T} tokens.")
    target = torch.as_tensor(token, dtype=torch.long, device=tokens.device).reshape(-1)
    target = target.expand(B) if target.numel() == 1 else target
    if target.numel() != B or bool(((target < 0) | (target >= model.config.vocab_size)).any()):
        raise MyGPT2Error(
            f"token must be one id or one per batch row, each below {model.config.vocab_size}; "
            f"got {token!r}."
        )
    if model.config.logit_softcap:
        raise MyGPT2Error(
            "direct logit attribution splits a logit into a sum of shares; a model with "
            "logit_softcap bends its logits through tanh, so no such sum exists."
        )
    learned_pos = model.transformer.wpe is not None  # rope and none have no position term
    names = ["hook_embed", "blocks.*.attn.hook_z", "blocks.*.hook_mlp_out"]
    names += ["hook_pos_embed"] if learned_pos else []
    with evaluating(model):
        logits, cache = model.run_with_cache(tokens, names=[*names, "ln_final.hook_scale"])
        ln = model.transformer.ln_f
        direction = model.lm_head.weight[target]  # (B, C)
        gained = direction * ln.weight  # the gain folded into the direction
        scale = cache["ln_final.hook_scale"][:, pos]  # (B, 1)
        labels, terms = ["embed"], [cache["hook_embed"][:, pos]]  # each (B, C)
        if learned_pos:
            labels, terms = [*labels, "pos_embed"], [*terms, cache["hook_pos_embed"][:, pos]]
        H = model.config.n_heads
        for layer, block in enumerate(model.transformer.h):
            z = cache[f"blocks.{layer}.attn.hook_z"][:, pos]  # (B, H, hs)
            W_O = block.attn.c_proj.weight.view(H, z.size(-1), -1)  # (H, hs, C): rows per head
            terms += list(torch.einsum("bhd,hdc->hbc", z, W_O))
            labels += [f"L{layer}H{h}" for h in range(H)]
            if block.attn.c_proj.bias is not None:
                terms.append(block.attn.c_proj.bias.expand(B, -1))
                labels.append(f"L{layer} attn bias")
            terms.append(cache[f"blocks.{layer}.hook_mlp_out"][:, pos])
            labels.append(f"L{layer} mlp")
        stacked = torch.stack(terms)  # (n, B, C)
        centred = stacked  # RMSNorm does not centre; LayerNorm's centring is linear
        if isinstance(ln, torch.nn.LayerNorm):
            centred = stacked - stacked.mean(dim=-1, keepdim=True)
        values = (centred / scale * gained).sum(dim=-1)  # (n, B)
        if getattr(ln, "bias", None) is not None:
            values = torch.cat([values, (ln.bias * direction).sum(dim=-1)[None]])
            labels.append("ln_final bias")
        logit = logits[torch.arange(B), pos, target]
    return Attribution(labels, values, logit, model.config.n_layers, H)


# ---------------------------------------------------------------------------- token losses
def token_losses(model: GPT, idx: Any) -> torch.Tensor:
    """(B, T - 1): the cross-entropy, in nats, of each token after the first given the tokens
    before it (its surprisal; divide by ln 2 for bits)."""
    tokens = as_tokens(model, idx)
    if tokens.shape[1] < 2:
        raise MyGPT2Error("a per-token loss needs at least two tokens (the first is given).")
    with evaluating(model):
        logits, _ = model(tokens)
        V = model.config.vocab_size
        losses = F.cross_entropy(
            logits[:, :-1, :V].float().transpose(1, 2), tokens[:, 1:], reduction="none"
        )
    return losses
