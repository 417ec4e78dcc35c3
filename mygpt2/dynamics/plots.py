"""Pictures of how a run learned: its health rows over steps, and a metric across its
checkpoint series against tokens seen (matplotlib, Agg backend, written atomically)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from mygpt2.dynamics.health import block_names
from mygpt2.errors import MyGPT2Error
from mygpt2.inspect.render import pyplot, save_figure


def save_health_png(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> None:
    """Four panels from a run's `health` rows: per-layer gradient norm and update ratio over
    steps (log scales; the usual 1e-4..1e-2 band shaded), the RMS of each block's output over
    steps, and the latest attention entropy per layer and head."""
    if not rows:
        raise MyGPT2Error("no health rows to draw: train with --health_interval N (N > 0).")
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    steps = [r["step"] for r in rows]
    layers = list(dict.fromkeys(k for r in rows for k in r["layers"]))
    colors = plt.get_cmap("viridis")
    for panel, key, title in (
        (axes[0][0], "grad_norm", "gradient norm before clipping"),
        (axes[0][1], "update_ratio", "update ratio ||dw|| / ||w|| per step"),
    ):
        for i, layer in enumerate(layers):
            values = [r["layers"].get(layer, {}).get(key) for r in rows]
            points = [(s, v) for s, v in zip(steps, values, strict=True) if v]
            if points:
                color = colors(i / max(len(layers) - 1, 1))
                panel.plot(*zip(*points, strict=True), ".-", label=layer, color=color)
        panel.set_yscale("log")
        panel.set_title(title, fontsize=10)
    axes[0][1].axhspan(1e-4, 1e-2, color="tab:green", alpha=0.08, label="1e-4 .. 1e-2")
    blocks = block_names(layers)
    for i, block in enumerate(blocks):
        values = [r["layers"].get(block, {}).get("resid_rms") for r in rows]
        points = [(s, v) for s, v in zip(steps, values, strict=True) if v is not None]
        if points:
            color = colors(i / max(len(blocks) - 1, 1))
            axes[1][0].plot(*zip(*points, strict=True), ".-", label=block, color=color)
    axes[1][0].set_title("RMS of each block's output (resid_post)", fontsize=10)
    for ax in (axes[0][0], axes[0][1], axes[1][0]):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    last = rows[-1]
    grid = [last["layers"][b].get("attn_entropy", []) for b in blocks]
    ax = axes[1][1]
    if grid and all(grid):
        data = torch.tensor(grid, dtype=torch.float32).numpy()
        image = ax.imshow(data, cmap="magma", aspect="auto", vmin=0.0)
        ax.set_xticks(range(data.shape[1]))
        ax.set_xticklabels([f"H{h}" for h in range(data.shape[1])])
        ax.set_yticks(range(len(blocks)))
        ax.set_yticklabels(blocks)
        if data.size <= 144:  # small grids: the numbers too
            for i in range(data.shape[0]):
                for j in range(data.shape[1]):
                    shade = "w" if data[i, j] < 0.6 * data.max() else "k"  # readable on magma
                    ax.text(
                        j, i, f"{data[i, j]:.2f}", ha="center", va="center", fontsize=7, color=shade
                    )
        fig.colorbar(image, ax=ax, label="nats (0: one key; log n: uniform)")
    ax.set_title(f"attention entropy at step {last['step']}", fontsize=10)
    fig.suptitle("training health", fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)


def save_series_png(
    tokens: Sequence[int],
    values: torch.Tensor,
    labels: Sequence[str],
    path: str | os.PathLike,
    ylabel: str,
    title: str = "",
    loss: Sequence[float | None] | None = None,
) -> None:
    """A metric across a checkpoint series against tokens seen (log axis): `values` is
    (snapshots, lines), one line per label (a head, a layer); with `loss`, the validation
    loss of each snapshot in a panel above, on the same axis."""
    data = values.detach().float().cpu().reshape(len(tokens), -1)
    if data.shape[1] != len(labels):
        raise MyGPT2Error(f"{data.shape[1]} lines of values for {len(labels)} labels.")
    plt = pyplot()
    panels = 2 if loss is not None else 1
    fig, axes = plt.subplots(panels, 1, figsize=(9, 3.2 + 3.2 * panels), sharex=True, squeeze=False)
    x = [max(int(t), 1) for t in tokens]
    if loss is not None:
        points = [(t, v) for t, v in zip(x, loss, strict=True) if v is not None]
        if points:
            axes[0][0].plot(*zip(*points, strict=True), "o-", color="tab:orange")
        axes[0][0].set_ylabel("validation loss (nats/token)")
        axes[0][0].grid(alpha=0.3)
    ax = axes[-1][0]
    colors = plt.get_cmap("tab20" if len(labels) > 10 else "tab10")
    for i, name in enumerate(labels):
        ax.plot(x, data[:, i].numpy(), ".-", label=name, color=colors(i % colors.N))
    ax.set_xscale("log")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(labels) <= 24:
        ax.legend(fontsize=7, ncol=max(1, len(labels) // 8))
    if title:
        axes[0][0].set_title(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
