"""How a network is doing while it trains: per-layer statistics of one step, and what to warn of.

Every `health_interval` steps the training loop hands one optimizer step to a `HealthProbe`:

- parameters, per tensor and per layer (`embed`, `L0` .. `L{n-1}`, `final`): the gradient norm
  before clipping, the weight norm before the step, and the update ratio ||dw|| / ||w|| of
  that step;
- activations, per block: the RMS of `resid_post`, of the attention and of the MLP output; per
  head, the attention entropy (nats, mean over positions) and the mean attention on the first
  token; the fraction of MLP units whose GELU output stays near zero over the whole batch.

Design choices:
- No second forward. The activations come from the model's hook points (`mygpt2.hooks`) on
  the step's last micro-batch, reduced to a few numbers inside the hook. The attention
  pattern is rebuilt from that forward's queries and keys as attention multiplies them (the
  last of `hook_q`, `q_norm.hook_out`, `hook_rot_q` a model has, and the same for keys) by
  the model's own `attention.attention_pattern`, without gradients, a few rows at a time, so
  the step itself keeps its fused attention kernel and never holds a (B, heads, T, T)
  tensor for backward.
- The gradients are the ones already there after backward (divided by the loss scale under
  float16), read before clipping; the weights are copied before the optimizer step, on
  health steps only. With `health_interval` 0 no probe exists: no hooks, no copies.
- Each step's statistics are one `kind: "health"` row of `metrics.jsonl` (`HealthProbe.row`);
  `health_warnings` reads such rows and says what a practitioner would look at first.
"""

from __future__ import annotations

import contextlib
import math
import re
import statistics
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from mygpt2.attention import attention_pattern
from mygpt2.hooks import installed

# activation points the probe watches in every block (queries and keys: see `_qk_points`)
WATCHED = (
    "blocks.*.hook_attn_out",
    "blocks.*.mlp.hook_post",
    "blocks.*.hook_mlp_out",
    "blocks.*.hook_resid_post",
)
DEAD_TOLERANCE = 1e-2  # |GELU(x)| below this: the unit is off (x < -2.6, or x near 0)
FIRST_TOKEN_COLLAPSE = 0.9  # a head putting more than this on the first token has collapsed
PATTERN_ROWS = 4  # sequences per chunk when rebuilding attention patterns (memory bound)
RATIO_BAND = (1e-4, 1e-2)  # where update-to-weight ratios of healthy runs usually sit


# ----------------------------------------------------------------------------- statistics
def rms(x: torch.Tensor) -> float:
    """Root mean square of all entries."""
    return float(x.detach().float().pow(2).mean().sqrt())


def causal_pattern(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """(B, H, T, T) causal attention of queries and keys shaped (B, T, H, hs), as the hook
    points show them, through the model's own `attention_pattern` (in float32)."""
    return attention_pattern(q.float().transpose(1, 2), k.float().transpose(1, 2))


def attention_entropy(pattern: torch.Tensor) -> torch.Tensor:
    """(H,): each head's entropy in nats, -sum_j p_j log p_j over the keys, averaged over the
    queries and the batch of a (B, H, T, S) pattern (0 log 0 counts as 0)."""
    p = pattern.detach().float()
    return -torch.special.xlogy(p, p).sum(dim=-1).mean(dim=(0, 2))


def first_token_attention(pattern: torch.Tensor) -> torch.Tensor:
    """(H,): each head's mean attention on the first key, over the queries after the first
    (the first query can see nothing else) and the batch."""
    p = pattern.detach().float()
    queries = p[:, :, 1:, 0] if p.size(2) > 1 else p[:, :, :, 0]
    return queries.mean(dim=(0, 2))


def dead_fraction(post: torch.Tensor, tolerance: float = DEAD_TOLERANCE) -> float:
    """The fraction of units (last axis) whose activation stays within `tolerance` of zero at
    every position of the batch."""
    flat = post.detach().reshape(-1, post.size(-1))
    return float((flat.abs() <= tolerance).all(dim=0).float().mean())


def layer_of(name: str) -> str:
    """The layer a parameter belongs to: `embed`, `L0` .. `L{n-1}`, or `final` (ln_f, and the
    output head when it is not tied to the embedding)."""
    m = re.match(r"(?:.*\.)?h\.(\d+)\.", name)
    if m:
        return f"L{m[1]}"
    if ".wte." in f".{name}" or ".wpe." in f".{name}":
        return "embed"
    return "final"


# ----------------------------------------------------------------------------- the probe
class HealthProbe:
    """One step's health. The training step calls `watching()` around the last micro-batch's
    forward, `before_update(scale)` after backward and before clipping, `after_update()`
    after the optimizer step; `row()` is then the step's numbers."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model  # the raw GPT: hooks live there, also under DDP or compile
        self.params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.q_point, self.k_point = _qk_points(model)
        self.blocks: dict[int, dict[str, Any]] = {}
        self._q: torch.Tensor | None = None
        self._before: list[torch.Tensor] = []
        self.grad_norms: list[float] = []
        self.weight_norms: list[float] = []
        self.update_norms: list[float] = []

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        """The body's forward reports its activations to the probe."""
        points = [*WATCHED, f"blocks.*.{self.q_point}", f"blocks.*.{self.k_point}"]
        with installed(self.model, [(points, self._observe)]):
            yield
        self._q = None

    @torch.no_grad()
    def _observe(self, x: torch.Tensor, name: str) -> None:
        _, layer, point = name.split(".", 2)
        stats = self.blocks.setdefault(int(layer), {})
        if point == self.q_point:
            self._q = x.detach()  # the keys come next, in the same line of the forward
        elif point == self.k_point and self._q is not None:
            q, k = self._q, x.detach()
            entropy, first = [], []
            for i in range(0, x.size(0), PATTERN_ROWS):
                pattern = causal_pattern(q[i : i + PATTERN_ROWS], k[i : i + PATTERN_ROWS])
                n = pattern.size(0)
                entropy.append(attention_entropy(pattern) * n)
                first.append(first_token_attention(pattern) * n)
            stats["attn_entropy"] = (sum(entropy) / x.size(0)).tolist()
            stats["attn_first"] = (sum(first) / x.size(0)).tolist()
            self._q = None
        elif point == "hook_attn_out":
            stats["attn_rms"] = rms(x)
        elif point == "mlp.hook_post":
            stats["dead_frac"] = dead_fraction(x)
        elif point == "hook_mlp_out":
            stats["mlp_rms"] = rms(x)
        elif point == "hook_resid_post":
            stats["resid_rms"] = rms(x)

    @torch.no_grad()
    def before_update(self, scale: float = 1.0) -> None:
        """Gradient norms (divided by the loss `scale`), weight norms, and a copy of the weights."""
        grads = [
            p.grad.detach().float().norm() if p.grad is not None else p.new_zeros(())
            for _, p in self.params
        ]
        self.grad_norms = (torch.stack(grads) / scale).tolist() if grads else []
        self._before = [p.detach().clone() for _, p in self.params]
        self.weight_norms = [
            float(n) for n in torch.stack([b.float().norm() for b in self._before])
        ]

    @torch.no_grad()
    def after_update(self) -> None:
        """The norm of each tensor's change in the optimizer step; the copies are let go."""
        deltas = [
            (p.detach() - b).float().norm()
            for (_, p), b in zip(self.params, self._before, strict=True)
        ]
        self.update_norms = torch.stack(deltas).tolist() if deltas else []
        self._before = []

    def row(self) -> dict[str, Any]:
        """The step's statistics as one JSON-able dict (the `health` row without step/kind)."""
        tensors: dict[str, dict[str, float | None]] = {}
        layers: dict[str, dict[str, Any]] = {}
        sums: dict[str, list[float]] = {}  # layer -> [grad^2, weight^2, update^2]
        for (name, _), g, w, u in zip(
            self.params, self.grad_norms, self.weight_norms, self.update_norms, strict=True
        ):
            tensors[name] = {"grad_norm": g, "weight_norm": w, "update_ratio": _ratio(u, w)}
            acc = sums.setdefault(layer_of(name), [0.0, 0.0, 0.0])
            acc[0], acc[1], acc[2] = acc[0] + g * g, acc[1] + w * w, acc[2] + u * u
        for layer, (g2, w2, u2) in sums.items():
            layers[layer] = {
                "grad_norm": math.sqrt(g2),
                "weight_norm": math.sqrt(w2),
                "update_ratio": _ratio(math.sqrt(u2), math.sqrt(w2)),
            }
        for i, stats in sorted(self.blocks.items()):
            layers.setdefault(f"L{i}", {}).update(stats)
        firsts = [f for stats in self.blocks.values() for f in stats.get("attn_first", [])]
        order = ["embed", *block_names(layers), "final"]
        return {
            "grad_norm": math.sqrt(sum(g * g for g in self.grad_norms)),
            "collapsed_heads": (
                sum(f > FIRST_TOKEN_COLLAPSE for f in firsts) / len(firsts) if firsts else 0.0
            ),
            "layers": {k: layers[k] for k in order if k in layers},
            "tensors": tensors,
        }


def _qk_points(model: torch.nn.Module) -> tuple[str, str]:
    """Where a model's queries and keys are last seen before attention multiplies them: after
    the rotation with rotary position embeddings (which comes after qk_norm), after qk_norm,
    else at hook_q and hook_k."""
    if getattr(model.config, "pos_emb", "learned") == "rope":
        return "attn.hook_rot_q", "attn.hook_rot_k"
    if getattr(model.config, "qk_norm", False):
        return "attn.q_norm.hook_out", "attn.k_norm.hook_out"
    return "attn.hook_q", "attn.hook_k"


def _ratio(update: float, weight: float) -> float | None:
    return update / weight if weight > 0 else None  # a zero tensor (a fresh bias): undefined


def block_names(names: Any) -> list[str]:
    """The block names (`L0`, `L1`, ...) among `names`, in order."""
    return sorted((k for k in names if k[:1] == "L" and k[1:].isdigit()), key=lambda k: int(k[1:]))


# ----------------------------------------------------------------------------- warnings
def block_layers(row: dict[str, Any]) -> list[str]:
    """The block names (`L0`, `L1`, ...) of a health row, in order."""
    return block_names(row["layers"])


def health_warnings(rows: Sequence[dict[str, Any]], recent: int = 5) -> list[str]:
    """What looks wrong in a run's health rows (the last `recent` of them; medians for the
    update ratio, so one noisy step does not warn): update ratios far (10x) outside
    1e-4..1e-2, gradient norms spread over 100x across the blocks, heads collapsed onto the
    first token, MLP layers with most units dead."""
    if not rows:
        return []
    last, tail = rows[-1], rows[-recent:]
    step, warnings = last["step"], []
    lo, hi = RATIO_BAND
    for layer in last["layers"]:
        ratios = [r["layers"][layer]["update_ratio"] for r in tail if layer in r["layers"]]
        ratios = [x for x in ratios if x is not None]
        if not ratios:
            continue
        ratio = statistics.median(ratios)
        if ratio > 10 * hi:
            warnings.append(
                f"{layer}: update ratio {ratio:.1e} (median of the last {len(ratios)} health "
                f"steps) is far above {hi:.0e}: each step rewrites a large part of the weights; "
                "a lower --lr would steady it."
            )
        elif 0 < ratio < lo / 10:
            warnings.append(
                f"{layer}: update ratio {ratio:.1e} (median of the last {len(ratios)} health "
                f"steps) is far below {lo:.0e}: the layer hardly learns (learning rate too low, "
                "or its gradients vanish)."
            )
    blocks = block_layers(last)
    norms = {b: last["layers"][b].get("grad_norm", 0.0) for b in blocks}
    positive = {b: n for b, n in norms.items() if n > 0}
    if len(positive) >= 2:
        big, small = max(positive, key=positive.get), min(positive, key=positive.get)
        if positive[big] > 100 * positive[small]:
            deep = int(big[1:]) > int(small[1:])
            trend = "grow toward the output" if deep else "vanish toward the output"
            warnings.append(
                f"gradient norms {trend} (step {step}): {big} {positive[big]:.2e} against "
                f"{small} {positive[small]:.2e}, over 100x apart."
            )
    collapsed = [
        f"{b}H{h}"
        for b in blocks
        for h, f in enumerate(last["layers"][b].get("attn_first", []))
        if f > FIRST_TOKEN_COLLAPSE
    ]
    if collapsed:
        warnings.append(
            f"collapsed attention (step {step}): {', '.join(collapsed)} put over "
            f"{FIRST_TOKEN_COLLAPSE:.0%} of their attention on the first token."
        )
    for b in blocks:
        dead = last["layers"][b].get("dead_frac")
        if dead is not None and dead > 0.5:
            warnings.append(
                f"{b}: {dead:.0%} of the MLP units were off for the whole batch (step {step}); "
                "dead units no longer learn (a lower --lr or warmup may keep them alive)."
            )
    return warnings
