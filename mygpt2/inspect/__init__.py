"""Look inside a model: plain functions on a model and token ids, built on its hook points.

    from mygpt2.inspect import logit_lens, patch, attention, direct_logit_attribution

    lens = logit_lens(model, ids)                       # (n_layers, B, T, vocab)
    grid = patch(model, clean, corrupt, "resid_pre", metric)   # (n_layers, T)
    patterns = attention(model, ids)                    # (n_layers, B, n_heads, T, T)
    dla = direct_logit_attribution(model, ids, token)   # per head and MLP, sums to the logit
    losses = token_losses(model, ids)                   # (B, T - 1), nats

`analyses` computes (tensors in, tensors out); `render` turns results into files and text: a
PNG grid of attention patterns, a JSON that attention viewers read, an HTML page of tokens
shaded by loss, terminal tables. `mygpt2 inspect` is the command line on top.
"""

from mygpt2.inspect.analyses import (
    SITES,
    Attribution,
    LensTop,
    attention,
    direct_logit_attribution,
    lens_top_k,
    logit_lens,
    patch,
    token_losses,
)
from mygpt2.inspect.render import (
    attention_json,
    loss_html,
    loss_table,
    save_attention_png,
    save_heatmap_png,
)

__all__ = [
    "SITES",
    "Attribution",
    "LensTop",
    "attention",
    "attention_json",
    "direct_logit_attribution",
    "lens_top_k",
    "logit_lens",
    "loss_html",
    "loss_table",
    "patch",
    "save_attention_png",
    "save_heatmap_png",
    "token_losses",
]
