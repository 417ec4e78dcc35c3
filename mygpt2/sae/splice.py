"""An SAE at its hook point in a model: the fit check, and the reconstruction spliced in.

    with mygpt2.sae.splice(model, sae):
        logits = model.run_with_hooks(ids)   # blocks.L.hook_... replaced by sae(activation)

`splice` installs one hook through the model's own hooks API (`model.hooks`), so every forward
inside the block, generation under the KV cache included, reads the reconstruction instead of
the activation. Nothing of the forward is rewritten here.

An SAE reads one vector per token: hook points shaped (B, T, d) as they are, those with heads,
(B, T, n_heads, head_size), as n_heads * head_size vectors (SAELens's hook_z reshaping).
Attention scores and patterns, (B, n_heads, T, T), are no per-token vectors and are refused.
`check_fits` learns a hook point's width from a one-token forward of the model, so it holds for
every architecture variant without a table of widths to keep in step with the model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from mygpt2.errors import MyGPT2Error
from mygpt2.hooks import resolve_names
from mygpt2.sae.model import SAE

NOT_PER_TOKEN = ("attn.hook_attn_scores", "attn.hook_pattern")


def check_hook_name(model: Any, name: str) -> str:
    """`name` if it is one per-token hook point of `model`; else a one-line error listing the
    close names."""
    if not isinstance(name, str) or not name:
        raise MyGPT2Error("give one hook point, e.g. blocks.0.hook_resid_post.")
    if any(c in name for c in "*?["):
        raise MyGPT2Error(f"an SAE reads one hook point, not the glob '{name}'.")
    resolve_names(name, model.config.n_layers, model.hook_names())  # unknown: close names
    if name.endswith(NOT_PER_TOKEN):
        raise MyGPT2Error(
            f"'{name}' holds attention weights (B, n_heads, T, T), not one vector per token; "
            "an SAE reads a per-token hook point such as hook_resid_post, hook_mlp_out or "
            "attn.hook_z."
        )
    return name


def to_rows(act: torch.Tensor) -> torch.Tensor:
    """A per-token activation (B, T, ...) as (B, T, width): heads flattened."""
    return act.reshape(*act.shape[:2], -1)


def hook_width(model: Any, name: str) -> int:
    """How many values per token the hook point `name` of `model` holds."""
    check_hook_name(model, name)
    widths: list[int] = []

    def record(x: torch.Tensor, _name: str) -> None:
        widths.append(to_rows(x).shape[-1])

    device = model.transformer.wte.weight.device
    with torch.no_grad(), model.hooks(fwd_hooks=[(name, record)]):
        model(torch.zeros(1, 1, dtype=torch.long, device=device))
    return widths[0]


def check_fits(model: Any, sae: SAE) -> None:
    """Refuse an SAE whose hook point or d_in does not fit `model`, naming both sides."""
    name = sae.cfg.hook_name
    if not name:
        raise MyGPT2Error(
            "the SAE names no hook point (cfg.json's metadata.hook_name); set sae.cfg.hook_name."
        )
    try:
        width = hook_width(model, name)
    except MyGPT2Error as e:
        if name in model.hook_names():
            raise
        raise MyGPT2Error(
            f"the SAE reads '{name}', which this {model.config.n_layers}-layer model lacks: {e}"
        ) from None
    if width != sae.cfg.d_in:
        raise MyGPT2Error(
            f"the SAE reads {name} with d_in={sae.cfg.d_in} values per token, but this model's "
            f"{name} holds {width}: the SAE was trained on another model."
        )


@contextlib.contextmanager
def splice(model: Any, sae: SAE) -> Iterator[Any]:
    """Inside the block, `model`'s activation at `sae.cfg.hook_name` is replaced by the SAE's
    reconstruction (in the activation's dtype and device). Checked before anything changes."""
    check_fits(model, sae)

    def reconstruct(x: torch.Tensor, _name: str) -> torch.Tensor:
        rows = to_rows(x).to(sae.W_dec.device)
        return sae(rows).to(device=x.device, dtype=x.dtype).reshape(x.shape)

    with model.hooks(fwd_hooks=[(sae.cfg.hook_name, reconstruct)]):
        yield model
