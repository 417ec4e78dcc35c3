"""The GPT-2 model: one file, read top to bottom.

Architecture as in OpenAI's GPT-2: token + learned position embeddings, `n_layers` pre-LayerNorm
blocks (causal self-attention, then a 4x-wide tanh-GELU MLP, each added to the residual
stream), a final LayerNorm, and an output head tied to the token embedding.

Design choices:
- Module and parameter names follow GPT-2's own (`wte`, `wpe`, `h.0.ln_1`, `attn.c_attn`,
  `mlp.c_proj`, ...), and so do their layouts: Hugging Face / OpenAI checkpoints load as they
  are (see `mygpt2.hf`).
- The projections inside the blocks store their weights (in, out), as GPT-2's own checkpoints
  do, not (out, in) as `nn.Linear`: generating one token multiplies a single row by each matrix,
  and CPU BLAS streams a matrix faster with the output axis contiguous (see `Linear`).
- Attention goes through `F.scaled_dot_product_attention`, which picks flash / memory-efficient
  kernels on GPUs and a fused kernel on CPUs; bf16 training on a CPU writes it out instead
  (`fused_is_slow`: the fused kernel's backward is the slow part there).
- A `cache` (`mygpt2.generate.KVCache`, created and owned by generation) lets generation run a
  prompt once (prefill) and then one token per step; the model only reads and advances it. It
  also handles a batch of prompts of different lengths: shorter prompts are left-padded, the
  padding is masked out of attention, and each row's positions start at 0 at its first real
  token. Weights packed for one-token steps travel in the cache too, never on the modules.
- With `pad_vocab`, the embedding is padded to a multiple of 64 (faster matmuls); the padding
  is no part of the distribution: `head` cuts its columns off the logits and the training loss
  gives them probability 0, so losses, sampling, hooks and exports all cover `vocab_size` ids.
- Named hook points (TransformerLens's names, `model.hook_names()`) let users see and edit
  activations: `run_with_cache`, `run_with_hooks`, `with model.hooks(...)` (see `mygpt2.hooks`).
  Each point is an `if hooks is not None:` check; without hooks the forward is the plain one.
- Architecture knobs of `ModelConfig` (defaults: GPT-2) are a few plain branches, not subclasses:
  `norm` (LayerNorm or RMSNorm), `pos_emb` (learned `wpe`, rotary on queries and keys, or none),
  `mlp` (GELU, ReLU squared, SwiGLU), `qk_norm`, `tie_embeddings`, `logit_softcap`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any

import torch
import torch.nn as nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from mygpt2.attention import attention_written_out, fused_is_slow
from mygpt2.config import ModelConfig, check_variants
from mygpt2.hooks import (
    ActivationCache,
    Hooks,
    hook_names,
    installed,
    run_with_cache,
    run_with_hooks,
)
from mygpt2.loss import linear_cross_entropy
from mygpt2.packing import packed_linear
from mygpt2.rmsnorm import RMSNorm

__all__ = ["GPT", "ModelConfig"]


class Linear(nn.Module):
    """`x @ weight + bias` with `weight` stored (in, out), as in GPT-2's checkpoints.

    `nn.Linear` stores (out, in). For one token at a time, MKL's matrix-vector product reads an
    (in, out) matrix faster on CPUs: generation of GPT-2 124M gets about 13% more tokens/s
    (benchmarks/bench_generate.py); batched training matmuls do not mind either way.
    """

    def __init__(self, n_in: int, n_out: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out)) if bias else None

    def forward(self, x: torch.Tensor, cache: Any = None) -> torch.Tensor:
        """`x @ weight + bias`; with a generation's `cache` that holds this weight packed for
        oneDNN (bf16 on CPUs with native bf16, `mygpt2.generate.GenerationWeights`), through
        that."""
        packed = cache.packed.get(self) if cache is not None and cache.packed else None
        if packed is not None:
            return packed_linear(x, packed, self.bias)
        rows = x.reshape(-1, x.size(-1))
        y = rows @ self.weight if self.bias is None else torch.addmm(self.bias, rows, self.weight)
        return y.view(*x.shape[:-1], -1)

    def extra_repr(self) -> str:
        n_in, n_out = self.weight.shape
        return f"in={n_in}, out={n_out}, bias={self.bias is not None}"


def make_norm(cfg: ModelConfig, width: int) -> nn.Module:
    """GPT-2's LayerNorm, or with `norm="rmsnorm"` RMSNorm: no centring and no bias."""
    if cfg.norm == "rmsnorm":
        return RMSNorm(width, eps=1e-5)
    return nn.LayerNorm(width, bias=cfg.bias)


def rotary(pos: torch.Tensor, hs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles at positions `pos` ((t,) or (B, t)), shaped
    (..., t, 1, hs/2) to broadcast over the heads of (B, t, nh, hs) queries and keys.

    Channel pair i of a head turns by pos * 10000^(-2i/hs) (RoFormer's frequencies), so the
    score of a query at m and a key at n depends on m - n only."""
    inv_freq = 1.0 / 10000.0 ** (torch.arange(0, hs, 2, device=pos.device).float() / hs)
    angles = pos[..., None].float() * inv_freq  # (..., t, hs/2)
    return angles.cos()[..., None, :], angles.sin()[..., None, :]


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Turn the channel pairs (i, i + hs/2) of `x` (B, t, nh, hs) by their angles. Pairs are the
    two halves of a head, as in Hugging Face's Llama, so its weights map onto ours as they are."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with an optional key/value cache."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.n_emb = cfg.n_emb
        self.c_attn = Linear(cfg.n_emb, 3 * cfg.n_emb, bias=cfg.bias)  # q, k, v in one matmul
        self.c_proj = Linear(cfg.n_emb, cfg.n_emb, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.q_norm = self.k_norm = None
        if cfg.qk_norm:  # each head's queries and keys at unit RMS, times a gain the heads share
            self.q_norm = RMSNorm(cfg.n_emb // cfg.n_heads, eps=1e-5)
            self.k_norm = RMSNorm(cfg.n_emb // cfg.n_heads, eps=1e-5)

    def forward(
        self,
        x: torch.Tensor,
        cache: Any = None,
        layer: int = 0,
        mask: torch.Tensor | None = None,
        hooks: Hooks | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        B, t, C = x.shape
        hs = C // self.n_heads
        # q, k, v side by side in one product. (One view of it, then a split, would dispatch
        # fewer ops, but torch.compile's AOTAutograd 2.13 replays that view on the wrong base.)
        q, k, v = self.c_attn(x, cache).split(self.n_emb, dim=2)
        q = q.view(B, t, self.n_heads, hs)  # (B, t, nh, hs)
        k = k.view(B, t, self.n_heads, hs)  # (B, t, nh, hs)
        v = v.view(B, t, self.n_heads, hs)  # (B, t, nh, hs)
        at = f"blocks.{layer}.attn." if hooks is not None else ""
        if hooks is not None:
            q, k, v = hooks(at + "hook_q", q), hooks(at + "hook_k", k), hooks(at + "hook_v", v)
        if self.q_norm is not None:  # v's dtype out: SDPA wants one dtype
            q = self.q_norm(q).to(v.dtype)
            k = self.k_norm(k).to(v.dtype)
            if hooks is not None:
                q, k = hooks(at + "q_norm.hook_out", q), hooks(at + "k_norm.hook_out", k)
        if rope is not None:  # the cache keeps rotated keys: each stays at its own position
            q, k = rotate(q, *rope), rotate(k, *rope)
            if hooks is not None:
                q, k = hooks(at + "hook_rot_q", q), hooks(at + "hook_rot_k", k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, nh, t, hs)
        is_causal = mask is None and t > 1
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, nh, S, hs) with S = cached + t
            if cache.length > 0 and mask is None:
                # new queries attend to every cached key: only needs a mask when t > 1
                is_causal = False
                if t > 1:
                    mask = cache.causal_mask(t, x.device)
        hooked = hooks is not None and hooks.wants(at + "hook_attn_scores", at + "hook_pattern")
        y = None  # the written-out form gives None when its hooks only looked: SDPA's output
        if hooked or fused_is_slow(q, k):
            p = self.dropout if self.training else 0.0
            y = attention_written_out(q, k, v, mask, is_causal, p, hooks, at)
        if y is None:
            y = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                dropout_p=self.dropout if self.training else 0.0,
                is_causal=is_causal,
            )  # (B, nh, t, hs)
        if hooks is not None:  # the hook sees (B, t, nh, hs)
            y = hooks(at + "hook_z", y.transpose(1, 2)).transpose(1, 2)
        y = self.c_proj(y.transpose(1, 2).contiguous().view(B, t, C), cache)
        return self.resid_dropout(y) if self.resid_dropout.training else y  # off: identity


def layer_norm(
    ln: nn.LayerNorm | nn.RMSNorm, x: torch.Tensor, hooks: Hooks, at: str
) -> torch.Tensor:
    """`ln(x)`, written out when a hook watches its scale (B, t, 1) or its normalized input
    (before the gain and bias), as TransformerLens's LayerNorm and RMSNorm hooks. Hooks that
    only look (return None, write nothing) leave the output `ln(x)` itself, bit for bit, unless
    gradients must reach the hooked values: in bf16 the written-out steps round differently."""
    if not hooks.wants(at + ".hook_scale", at + ".hook_normalized"):
        return ln(x)
    rms = isinstance(ln, nn.RMSNorm)  # RMSNorm scales without centring and has no bias
    centred = x if rms else x - x.mean(dim=-1, keepdim=True)
    scale, edited_scale = hooks.changed(
        at + ".hook_scale", (centred.pow(2).mean(dim=-1, keepdim=True) + ln.eps).sqrt()
    )
    normalized, edited = hooks.changed(at + ".hook_normalized", centred / scale)
    looked_only = not (edited_scale or edited)
    if looked_only and not (torch.is_grad_enabled() and x.requires_grad):
        return ln(x)
    bias = None if rms else ln.bias
    return normalized * ln.weight if bias is None else torch.addcmul(bias, normalized, ln.weight)


class _ReluSquared(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        r = torch.relu(x)
        ctx.save_for_backward(r)
        return r * r

    @staticmethod
    @once_differentiable  # a second derivative is refused, never computed wrong
    def backward(ctx, grad):
        (r,) = ctx.saved_tensors
        return torch.mul(grad, r).mul_(2.0)  # 0 where x <= 0, as relu's own gradient


def relu_squared(x: torch.Tensor) -> torch.Tensor:
    """relu(x)^2 with one kept tensor and a two-op backward (autograd through relu and
    square keeps both and runs three kernels); the same values, the same gradient."""
    return _ReluSquared.apply(x)


def mlp_width(cfg: ModelConfig) -> int:
    """The MLP's hidden width: 4 n_emb, or for SwiGLU's three matrices 8/3 n_emb rounded up to
    a multiple of 64, about the same parameter count (Llama's choice)."""
    return math.ceil(8 * cfg.n_emb / 3 / 64) * 64 if cfg.mlp == "swiglu" else 4 * cfg.n_emb


class MLP(nn.Module):
    """Position-wise feed-forward: n_emb -> hidden -> activation -> n_emb.

    GPT-2: tanh-GELU; `relu2`: ReLU squared; `swiglu`: silu(x W_gate) * (x W_up), with W_gate and
    W_up side by side in `c_fc` (one matmul)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hidden = mlp_width(cfg)
        self.kind = cfg.mlp
        self.c_fc = Linear(cfg.n_emb, hidden * (2 if cfg.mlp == "swiglu" else 1), bias=cfg.bias)
        self.c_proj = Linear(hidden, cfg.n_emb, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(
        self, x: torch.Tensor, hooks: Hooks | None = None, at: str = "", cache: Any = None
    ) -> torch.Tensor:
        if hooks is None and self.kind == "gelu":
            h = self.c_proj(F.gelu(self.c_fc(x, cache), approximate="tanh"), cache)
            return self.dropout(h) if self.dropout.training else h  # off: identity
        h, up = self.c_fc(x, cache), None  # (B, t, hidden), swiglu (B, t, 2 hidden)
        if self.kind == "swiglu":
            h, up = h.chunk(2, dim=-1)  # the gate's input, the linear half
        if hooks is not None:
            h = hooks(at + "hook_pre", h)
            if up is not None:
                up = hooks(at + "hook_pre_linear", up)
        if self.kind == "gelu":
            h = F.gelu(h, approximate="tanh")
        elif self.kind == "relu2":
            h = relu_squared(h)
        else:
            h = F.silu(h) * up
        if hooks is not None:
            h = hooks(at + "hook_post", h)
        h = self.c_proj(h, cache)
        return self.dropout(h) if self.dropout.training else h


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1 = make_norm(cfg, cfg.n_emb)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = make_norm(cfg, cfg.n_emb)
        self.mlp = MLP(cfg)

    def forward(
        self,
        x: torch.Tensor,
        cache: Any = None,
        layer: int = 0,
        mask: torch.Tensor | None = None,
        hooks: Hooks | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if hooks is None:
            x = x + self.attn(self.ln_1(x), cache, layer, mask, None, rope)
            return x + self.mlp(self.ln_2(x), None, "", cache)
        # the same two lines, through the block's hook points
        at = f"blocks.{layer}."
        x = hooks(at + "hook_resid_pre", x)
        attn_in = layer_norm(self.ln_1, x, hooks, at + "ln1")
        attn_out = self.attn(attn_in, cache, layer, mask, hooks, rope)
        x = hooks(at + "hook_resid_mid", x + hooks(at + "hook_attn_out", attn_out))
        mlp_out = self.mlp(layer_norm(self.ln_2, x, hooks, at + "ln2"), hooks, at + "mlp.", cache)
        return hooks(at + "hook_resid_post", x + hooks(at + "hook_mlp_out", mlp_out))


class GPT(nn.Module):
    """GPT-2 language model. `model(idx, targets)` returns `(logits, loss)`."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        check_variants(cfg, warn=False)  # an unknown knob value lists the valid ones
        self.config = dataclasses.replace(cfg)  # our own copy: crop_context changes it
        self.padded_vocab_size = (
            math.ceil(cfg.vocab_size / 64) * 64 if cfg.pad_vocab else cfg.vocab_size
        )
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(self.padded_vocab_size, cfg.n_emb),
                # None (no module, no weights) with rotary or no position embeddings
                wpe=nn.Embedding(cfg.T, cfg.n_emb) if cfg.pos_emb == "learned" else None,
                drop=nn.Dropout(cfg.dropout),
                h=nn.ModuleList([Block(cfg) for _ in range(cfg.n_layers)]),
                ln_f=make_norm(cfg, cfg.n_emb),
            )
        )
        self.lm_head = nn.Linear(cfg.n_emb, self.padded_vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight  # tied input/output embeddings
        self.active_hooks: Hooks | None = None  # set inside `with model.hooks(...)`
        self.apply(self._init_weights)
        # GPT-2 scales the residual projections by 1/sqrt(2 * n_layers): each block adds two
        # terms to the residual stream, and this keeps its variance from growing with depth.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layers))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, Linear)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: Any = None,
        return_logits: bool = True,
        reduction: str = "mean",
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Logits for every position of `idx` (B, t); with `targets`, also the mean cross-entropy
        (positions whose target is -100 are ignored), or with `reduction="sum"` its sum over the
        valid targets (training weighs micro-batches by their token counts).

        Training passes `return_logits=False`: the loss is then computed chunk by chunk without
        materialising the logits (see `LinearCrossEntropy`), and None comes back for them.

        With a `cache`, `idx` continues the cached tokens and only the last position's logits
        are computed (that is all generation needs).
        """
        x = self.hidden(idx, cache)
        hooks = self.active_hooks
        fused = hooks is None or not hooks.wants("hook_logits")  # a hook on the logits needs them
        fused = fused and not self.config.logit_softcap  # the fused loss knows no softcap
        if targets is not None and not return_logits and torch.is_grad_enabled() and fused:
            h = x.reshape(-1, x.size(-1))
            # big chunks keep the matmuls efficient; 2**25 floats (128 MB) bound the memory
            chunk_rows = max(64, 2**25 // self.padded_vocab_size)
            loss = linear_cross_entropy(
                h,
                self.lm_head.weight,
                targets.reshape(-1),
                chunk_rows,
                reduction,
                vocab=self.config.vocab_size,  # the padding rows take no part, as in `head`
            )
            return None, loss
        logits = self.head(x, cache.head if cache is not None else None)  # (B, t, vocab)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.reshape(-1, logits.size(-1)).float(),  # (a copy with pad_vocab's cut)
                targets.reshape(-1),
                ignore_index=-100,
                reduction=reduction,
            )
        return logits, loss

    def hidden(self, idx: torch.Tensor, cache: Any = None) -> torch.Tensor:
        """The trunk: embeddings, positions, every block and the final norm, (B, t, n_emb) for
        `idx` (B, t). With a `cache`, `idx` continues the cached tokens and only the last
        position comes back (that is all generation needs).

        Every tool that needs the network's output goes through here and `head`, so each
        architecture knob (positions, norms, MLPs, qk_norm, softcap) reaches them all."""
        t = idx.shape[1]
        start = cache.length if cache is not None else 0
        if start + t > self.config.T:
            raise ValueError(
                f"sequence of {start + t} tokens is longer than the context length T={self.config.T}"
            )
        pos = torch.arange(start, start + t, device=idx.device)
        mask = None
        if cache is not None and bool(cache.pad.any()):
            # left-padded rows: positions count from the first real token; pad keys are hidden
            pos = (pos[None, :] - cache.pad[:, None]).clamp(min=0)  # (B, t)
            keys = torch.arange(start + t, device=idx.device)
            key_ok = keys[None, :] >= cache.pad[:, None]  # (B, S)
            causal = keys[None, :] <= (torch.arange(t, device=idx.device) + start)[:, None]
            mask = (causal[None] & key_ok[:, None, :])[:, None]  # (B, 1, t, S)
        hooks, wpe = self.active_hooks, self.transformer.wpe
        if hooks is None:
            x = self.transformer.wte(idx) if wpe is None else self.transformer.wte(idx) + wpe(pos)
        else:
            hooks.positions = range(start, start + t)
            x = hooks("hook_embed", self.transformer.wte(idx))
            if wpe is not None:
                x = x + hooks("hook_pos_embed", wpe(pos).expand_as(x))
        rope = None
        if self.config.pos_emb == "rope":  # positions go into each layer's queries and keys
            rope = rotary(pos, self.config.n_emb // self.config.n_heads)
        if self.transformer.drop.training:  # in eval an identity, not worth a call
            x = self.transformer.drop(x)
        for i, block in enumerate(self.transformer.h):
            x = block(x, cache, i, mask, hooks, rope)
        if cache is not None:
            cache.advance()
            x = x[:, -1:, :]  # generation only needs the next-token distribution
            if hooks is not None:
                hooks.positions = hooks.positions[-1:]
        if hooks is None:
            return self.transformer.ln_f(x)
        return hooks("ln_final.hook_out", layer_norm(self.transformer.ln_f, x, hooks, "ln_final"))

    def head(self, h: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (..., padded vocab) of final hidden states `h`: the output head, then the
        softcap (`cap * tanh(logits / cap)`) if the model has one, then `hook_logits`.

        `weight` is generation's copy of the head ((n_emb, vocab) or packed for oneDNN,
        `mygpt2.generate`); by default the model's own `lm_head`. With `pad_vocab` the head's
        product runs over the padded rows (the fast shape) and the padding columns are cut
        off here, once for every consumer: they are no part of the model's distribution."""
        if weight is None:
            logits = self.lm_head(h)
        else:
            logits = packed_linear(h, weight, None) if weight.is_mkldnn else h @ weight
        if logits.size(-1) != self.config.vocab_size:  # a view, no copy
            logits = logits[..., : self.config.vocab_size]
        cap = self.config.logit_softcap
        if cap:  # bounded logits, smooth
            logits = torch.tanh(logits / cap) * cap
        hooks = self.active_hooks
        if hooks is not None:
            logits = hooks("hook_logits", logits)
        return logits

    # ----------------------------------------------------------------------------- hooks
    def hook_names(self) -> list[str]:
        """Every hook point (TransformerLens's names), in the order a forward reaches them."""
        cfg = self.config
        return hook_names(cfg.n_layers, cfg.pos_emb, cfg.mlp, cfg.qk_norm)

    def hooks(self, fwd_hooks=()) -> contextlib.AbstractContextManager:
        """`with model.hooks(fwd_hooks=[(name_or_glob, fn), ...]):` runs the body, generation
        included, with the hooks active; they are removed on exit, also on an exception."""
        return installed(self, fwd_hooks)

    def run_with_hooks(self, idx, fwd_hooks=()) -> torch.Tensor:
        """The logits (B, T, vocab) of `idx` with `fwd_hooks` active for this one forward."""
        return run_with_hooks(self, idx, fwd_hooks)

    def run_with_cache(
        self, idx, names=None, grad: bool = False
    ) -> tuple[torch.Tensor, ActivationCache]:
        """`(logits, cache)`: the activations at `names` (a list, a glob, a predicate; None: all);
        with `grad=True`, `loss.backward()` then fills `cache.grad(name)`."""
        return run_with_cache(self, idx, names, grad)

    # ----------------------------------------------------------------------------- sizes
    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count (tied embeddings counted once); optionally without position/token
        embeddings (an untied output head still counts)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wte.weight.numel()
            if self.transformer.wpe is not None:
                n -= self.transformer.wpe.weight.numel()
        return n

    def flops_per_token(self, T: int | None = None) -> float:
        """Training FLOPs (forward + backward) per token at context length `T`.

        6 FLOPs per weight per token for every matmul weight (2 forward, 4 backward), counting
        the tied embedding once as the output head (an untied head is a weight of its own, the
        embedding a lookup), plus the attention scores and weighted sum:
        12 * n_layers * n_emb * T (the PaLM paper's estimate).
        """
        cfg = self.config
        T = cfg.T if T is None else T
        matmul_weights = self.num_params(non_embedding=True)
        if cfg.tie_embeddings:
            matmul_weights += self.transformer.wte.weight.numel()
        matmul_weights -= sum(
            p.numel() for n, p in self.named_parameters() if p.dim() < 2
        )  # biases and LayerNorm gains are not matmuls
        return 6 * matmul_weights + 12 * cfg.n_layers * cfg.n_emb * T

    def crop_context(self, T: int) -> None:
        """Shorten the context length to `T` (say GPT-2's 1024 to 256 to fine-tune on a CPU),
        keeping the first `T` position embeddings (rotary positions need no cropping)."""
        if not 1 <= T <= self.config.T:
            raise ValueError(f"can only crop the context to 1..{self.config.T}, not {T}")
        self.config.T = T
        wpe = self.transformer.wpe
        if wpe is not None:
            wpe.weight = nn.Parameter(wpe.weight[:T].detach().clone())

    def set_dropout(self, p: float) -> None:
        """Every dropout of the model at probability `p`: fine-tuning GPT-2's weights or
        resuming a run may change it (the one setting of the model that may)."""
        self.config.dropout = p
        for m in self.modules():
            if isinstance(m, nn.Dropout):
                m.p = p
            if hasattr(m, "dropout") and isinstance(m.dropout, float):  # attention's SDPA rate
                m.dropout = p
