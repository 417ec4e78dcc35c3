"""The optimizer and the learning-rate schedule.

- AdamW with weight decay on matrices only (embeddings and Linear weights); biases and
  LayerNorm gains are never decayed, as in GPT-2 and nanoGPT.
- The learning rate follows the original myGPT2 `_get_cos_lr`: linear warmup over
  `warmup_ratio * max_steps` steps, then cosine decay from `lr` to `min_lr` at `max_steps`.
"""

from __future__ import annotations

import math

import torch

from mygpt2.config import Config


def get_lr(step: int, cfg: Config) -> float:
    """Learning rate at macro step `step` (0-based): linear warmup, then cosine to min_lr."""
    t = cfg.train
    warmup = int(t.warmup_ratio * t.max_steps)
    if step < warmup:
        return t.lr * (step + 1) / warmup
    if step >= t.max_steps:
        return t.min_lr
    progress = (step - warmup) / max(1, t.max_steps - warmup)
    return t.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (t.lr - t.min_lr)


def make_optimizer(model: torch.nn.Module, cfg: Config, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (embeddings, Linear weights) only."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]  # biases and LayerNorm gains
    groups = [
        {"params": decay, "weight_decay": cfg.train.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # one fused kernel instead of a chain of foreach ops: on a CPU the step is ~6x faster
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(
        groups, lr=cfg.train.lr, betas=(cfg.train.beta1, cfg.train.beta2), fused=fused
    )


def set_hyperparameters(optimizer: torch.optim.Optimizer, cfg: Config) -> None:
    """Put the config's betas and weight decay into a (restored) optimizer's groups, so that
    values given on `--resume` take effect instead of those saved in its state."""
    for group in optimizer.param_groups:
        group["betas"] = (cfg.train.beta1, cfg.train.beta2)
    optimizer.param_groups[0]["weight_decay"] = cfg.train.weight_decay  # the matrices' group
