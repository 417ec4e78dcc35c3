"""Analysis results as files and text: PNG grids and heatmaps, attention JSON, a per-token loss
table and HTML page.

Design choices:
- Pictures are matplotlib with the Agg backend (no display needed), written atomically.
- The attention JSON holds the tokens and the patterns as nested lists, layers x heads x
  queries x keys: the arrays that bertviz's `head_view(attention, tokens)` and circuitsvis's
  `attention_patterns(tokens, attention)` take (see docs/INSPECT.md for the two lines each).
- Token labels show whitespace (`\\n`, `\\t`, a token of spaces as dots) so that it is visible
  on an axis.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Sequence
from typing import Any

import torch

from mygpt2.errors import MyGPT2Error
from mygpt2.fileio import atomic_write


def label(token: str) -> str:
    """A token as a readable label: newlines and tabs escaped, a token of spaces as dots."""
    if token and token.strip(" ") == "":
        return "\u00b7" * len(token)
    return token.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike) -> None:
    plt = pyplot()
    try:
        atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=110))
    finally:
        plt.close(fig)


def _check_tokens(tokens: Sequence[str], T: int) -> None:
    if len(tokens) != T:
        raise MyGPT2Error(f"{len(tokens)} token labels for {T} positions.")


def save_attention_png(
    patterns: torch.Tensor, tokens: Sequence[str], path: str | os.PathLike, title: str = ""
) -> None:
    """A grid of attention patterns, one cell per layer (rows) and head (columns), queries down
    and keys across, token labels on the outer axes. `patterns`: (n_layers, n_heads, T, T), or
    a `attention()` result (n_layers, B, n_heads, T, T) of which the first row is drawn."""
    if patterns.dim() == 5:
        patterns = patterns[:, 0]
    if patterns.dim() != 4:
        raise MyGPT2Error(f"expected patterns (L, H, T, T), got {tuple(patterns.shape)}.")
    L, H, T, _ = patterns.shape
    _check_tokens(tokens, T)
    plt = pyplot()
    cell = min(max(1.6, 0.16 * T), 26 / max(L, H))  # inches: labels readable, figure bounded
    fig, axes = plt.subplots(L, H, figsize=(cell * H + 1.2, cell * L + 1.0), squeeze=False)
    font = max(3.0, min(8.0, 55 * cell / max(T, 1)))
    ticks = list(range(T)) if T <= 64 else list(range(0, T, math.ceil(T / 64)))
    names = [label(tokens[i]) for i in ticks]
    data = patterns.detach().float().cpu().numpy()
    for layer in range(L):
        for head in range(H):
            ax = axes[layer][head]
            ax.imshow(data[layer, head], cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_title(f"L{layer} H{head}", fontsize=8, pad=2)
            ax.set_xticks(ticks if layer == L - 1 else [])
            ax.set_yticks(ticks if head == 0 else [])
            if layer == L - 1:
                ax.set_xticklabels(names, rotation=90, fontsize=font)
            if head == 0:
                ax.set_yticklabels(names, fontsize=font)
    top = 1.0
    if title:
        fig.suptitle(title, fontsize=10)
        top -= 0.4 / fig.get_figheight()  # room for the title above the first row
    fig.tight_layout(rect=(0, 0, 1, top))
    save_figure(fig, path)


def save_heatmap_png(
    grid: torch.Tensor,
    path: str | os.PathLike,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    title: str = "",
    colorbar: str = "",
    center: float = 0.0,
) -> None:
    """A (rows, cols) grid as a heatmap on a blue-white-red scale, white at `center` (a patching
    grid, layers x positions or heads, centred on the corrupt run's metric; direct logit
    attribution, layers x heads, centred on 0)."""
    if grid.dim() != 2 or tuple(grid.shape) != (len(row_labels), len(col_labels)):
        raise MyGPT2Error(
            f"a heatmap of shape {tuple(grid.shape)} needs {grid.shape[0]} row and "
            f"{grid.shape[-1]} column labels, got {len(row_labels)} and {len(col_labels)}."
        )
    plt = pyplot()
    data = grid.detach().float().cpu().numpy()
    rows, cols = data.shape
    fig, ax = plt.subplots(figsize=(min(2.5 + 0.45 * cols, 20), min(1.8 + 0.4 * rows, 14)))
    bound = float(abs(data - center).max()) or 1.0
    image = ax.imshow(data, cmap="RdBu_r", vmin=center - bound, vmax=center + bound, aspect="auto")
    ax.set_xticks(range(cols))
    ax.set_xticklabels([label(c) for c in col_labels], rotation=90 if cols > 6 else 0)
    ax.set_yticks(range(rows))
    ax.set_yticklabels(row_labels)
    fig.colorbar(image, ax=ax, label=colorbar)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def attention_json(patterns: torch.Tensor, tokens: Sequence[str]) -> dict[str, Any]:
    """`{"tokens": [...], "attention": [layer][head][query][key]}` for attention viewers (the
    first batch row of an `attention()` result, or (n_layers, n_heads, T, T))."""
    if patterns.dim() == 5:
        patterns = patterns[:, 0]
    if patterns.dim() != 4:
        raise MyGPT2Error(f"expected patterns (L, H, T, T), got {tuple(patterns.shape)}.")
    _check_tokens(tokens, patterns.shape[-1])
    rounded = (patterns.detach().float().cpu() * 1e6).round() / 1e6  # 6 decimals keep it small
    return {"tokens": list(tokens), "attention": rounded.tolist()}


# ------------------------------------------------------------------------- per-token loss
def loss_table(tokens: Sequence[str], losses: Sequence[float]) -> str:
    """A text table: position, token, loss in nats, surprisal in bits, the model's probability.
    `losses[i]` is the loss of `tokens[i + 1]`; the first token is given, so it has none."""
    if len(losses) != len(tokens) - 1:
        raise MyGPT2Error(f"{len(losses)} losses for {len(tokens)} tokens (expected one fewer).")
    width = max([5, *(len(repr(t)) for t in tokens)])
    lines = [f"{'pos':>4}  {'token':<{width}}  {'nats':>6}  {'bits':>6}  {'p':>7}"]
    lines.append(f"{0:>4}  {tokens[0]!r:<{width}}  {'-':>6}  {'-':>6}  {'-':>7}")
    for i, loss in enumerate(losses, start=1):
        loss = float(loss)
        text = repr(tokens[i])
        lines.append(
            f"{i:>4}  {text:<{width}}  {loss:6.2f}  {loss / math.log(2):6.2f}  {math.exp(-loss):7.4f}"
        )
    if losses:
        mean = sum(float(x) for x in losses) / len(losses)
        lines.append(f"mean loss {mean:.3f} nats ({mean / math.log(2):.3f} bits) per token")
    return "\n".join(lines)


PAGE_STYLE = (
    "body { font-family: sans-serif; margin: 2em; } "
    ".text { font-family: monospace; white-space: pre-wrap; line-height: 1.7; } "
    "span { border-radius: 2px; }"
)


def loss_html(tokens: Sequence[str], losses: Sequence[float], title: str = "per-token loss") -> str:
    """An HTML page of the text with each token shaded by its loss (darker: more surprising);
    hovering a token shows its loss, surprisal and probability."""
    if len(losses) != len(tokens) - 1:
        raise MyGPT2Error(f"{len(losses)} losses for {len(tokens)} tokens (expected one fewer).")
    values = [float(x) for x in losses]
    top = max(values, default=1.0) or 1.0
    spans = [f'<span title="given">{html.escape(tokens[0])}</span>']
    for token, loss in zip(tokens[1:], values, strict=True):
        alpha = min(1.0, max(0.0, loss / top))
        tip = f"loss {loss:.2f} nats, {loss / math.log(2):.2f} bits, p = {math.exp(-loss):.4f}"
        spans.append(
            f'<span style="background: rgba(214, 39, 40, {alpha:.3f})" title="{tip}">'
            f"{html.escape(token)}</span>"
        )
    mean = sum(values) / len(values) if values else 0.0
    return (
        "<!doctype html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title>\n<style>{PAGE_STYLE}</style></head><body>\n"
        f"<h1>{html.escape(title)}</h1>\n<p>{len(values)} predicted tokens, mean loss "
        f"{mean:.3f} nats ({mean / math.log(2):.3f} bits); darkest: {top:.2f} nats. Hover a "
        "token for its numbers.</p>\n"
        f"<div class='text'>{''.join(spans)}</div>\n</body></html>\n"
    )
