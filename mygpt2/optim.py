"""The optimizer and the learning-rate schedule.

Optimizers (`--optimizer`):
- `adamw` (the default): AdamW on every tensor, weight decay on matrices only (embeddings and
  Linear weights); biases and norm gains are never decayed, as in GPT-2 and nanoGPT.
- `muon`: PyTorch's `torch.optim.Muon` for the 2-D matrices inside the blocks (attention and
  MLP weights) at peak rate `muon_lr`, and AdamW at peak rate `lr` for everything else
  (embeddings, an untied head, biases, gains), as the modded-nanogpt speedrun splits them.
- `sgd`: `torch.optim.SGD` with Nesterov momentum `momentum` on every tensor; its weight decay
  (matrices only) is the classic L2 term added to the gradient, not AdamW's decoupled one.

Two optimizers under one step are one `Optimizers` object, which `train_step`, the grad scaler
and checkpoints use as they use one torch optimizer. Muon is torch's, stepped by `muon_step`:
the same update, with same-shaped matrices (in the wide orientation, across parameter
groups) orthogonalised together in batched matmuls, where torch runs the 15 small products of
five Newton-Schulz iterations matrix by matrix (its step was a fifth of the CPU speedrun's).

`torch.optim.Muon` arrived in torch 2.9, and the package allows older torch: it is looked up
only when `--optimizer muon` asks for it (`muon_class`), so an AdamW or SGD run trains and
resumes on any torch, and a Muon request on an older one is refused before any work, naming
the version it needs.

The schedule (`--schedule`) follows a linear warmup over `warmup_ratio * max_steps` steps:
`cosine` (the original myGPT2 `_get_cos_lr`) or `linear` from `lr` to `min_lr` at
`max_steps`; `wsd` (warmup-stable-decay) holds `lr`, then falls linearly to `min_lr` over the
last `decay_ratio * max_steps` steps; `constant` holds `lr`. A parameter group may carry
`lr_scale`: `train_step` sets its rate to the schedule's times that (Muon's `muon_lr / lr`).
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any

import torch

from mygpt2.config import Config
from mygpt2.errors import MyGPT2Error

# ----------------------------------------------------------------------------- the schedule


def get_lr(step: int, cfg: Config) -> float:
    """Learning rate at macro step `step` (0-based): linear warmup, then the schedule's shape."""
    t = cfg.train
    warmup = int(t.warmup_ratio * t.max_steps)
    if step < warmup:
        return t.lr * (step + 1) / warmup
    if t.schedule == "constant":
        return t.lr
    if step >= t.max_steps:
        return t.min_lr
    if t.schedule == "wsd":
        decay = round(t.decay_ratio * t.max_steps)
        start = t.max_steps - decay
        if step < start:
            return t.lr
        return t.lr - (step - start) / decay * (t.lr - t.min_lr)
    progress = (step - warmup) / max(1, t.max_steps - warmup)
    if t.schedule == "linear":
        return t.lr - progress * (t.lr - t.min_lr)
    return t.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (t.lr - t.min_lr)


# ----------------------------------------------------------------------------- the optimizers

MUON_TORCH = "2.9"  # the first torch release with torch.optim.Muon


def muon_class() -> type[torch.optim.Optimizer] | None:
    """torch's Muon with a batched step (`muon_step`), or None on a torch without Muon. A
    subclass, so torch's own step machinery (profiler label, step hooks, the count schedulers
    check) and its state dict stay as they are."""
    muon = getattr(torch.optim, "Muon", None)
    return None if muon is None else _batched_muon(muon)


@functools.cache  # one class per torch class, so isinstance checks agree
def without_dynamo(base: type[torch.optim.Optimizer]) -> type[torch.optim.Optimizer]:
    """torch's optimizer class `base`, never importing `torch._dynamo`.

    torch wraps `step`, `zero_grad`, `add_param_group` and the state-dict methods of its
    optimizers so that `torch.compile` leaves them alone, and the first call of such a wrapper
    imports `torch._dynamo`: 0.8 s at the start of every training run (a twentieth of the CPU
    speedrun, docs/BENCHMARKS.md). mygpt2 never steps an optimizer inside compiled code, so
    this subclass calls torch's own methods from under those wrappers (`inspect.unwrap`, which
    follows `functools.wraps`): the same code, the same state dicts. `step` sets gradient
    mode as torch's wrapper does (on only for a `differentiable` optimizer), and after a fused
    step bumps the version counter of every parameter it wrote, which the fused kernels leave
    alone (`generate.GenerationWeights` tells changed weights by it). The class is made here,
    so pickle an optimizer's state dict (as mygpt2 does), not the optimizer itself."""
    raw_step = inspect.unwrap(base.step)

    class Lean(base):
        add_param_group = inspect.unwrap(base.add_param_group)
        zero_grad = inspect.unwrap(base.zero_grad)
        state_dict = inspect.unwrap(base.state_dict)
        load_state_dict = inspect.unwrap(base.load_state_dict)

        def step(self, closure: Any = None) -> Any:
            with torch.set_grad_enabled(self.defaults.get("differentiable", False)):
                loss = raw_step(self, closure)
            fused = [
                p
                for group in self.param_groups
                if group.get("fused")
                for p in group["params"]
                if p.grad is not None
            ]
            if fused:
                torch.autograd.graph.increment_version(fused)
            return loss

    # torch's name: profiler labels, logs and reprs read as before
    Lean.__name__ = Lean.__qualname__ = base.__name__
    return Lean


@functools.cache  # one class per torch Muon class, so isinstance checks agree
def _batched_muon(muon: type[torch.optim.Optimizer]) -> type[torch.optim.Optimizer]:
    class Muon(without_dynamo(muon)):  # torch's name: profiler labels, logs, reprs as before
        """`torch.optim.Muon` whose step orthogonalises same-shaped matrices together."""

        def step(self, closure: Any = None) -> Any:
            if closure is not None or not _has_muon_internals():
                return super().step(closure)  # torch's own, matrix by matrix
            muon_step(self)
            return None

    return Muon


def _has_muon_internals() -> bool:
    """Whether this torch's Muon has the pieces `muon_step` builds on (its group set-up and
    its rate rule, private names): torch 2.9-2.13 do; elsewhere torch's own step runs."""
    try:
        from torch.optim._muon import _adjust_lr  # noqa: F401
    except ImportError:
        return False
    return hasattr(getattr(torch.optim, "Muon", None), "_init_group")


def check_optimizer(name: str) -> None:
    """Refuse an optimizer this torch does not have (Muon before torch 2.9)."""
    if name == "muon" and muon_class() is None:
        raise MyGPT2Error(
            f"--optimizer muon needs torch {MUON_TORCH} or later (torch.optim.Muon); this is "
            f"torch {torch.__version__}. Upgrade torch, or use --optimizer adamw."
        )


class Optimizers:
    """Several torch optimizers stepped as one (Muon for the hidden matrices, AdamW for the
    rest): their parameter groups in one list, one `step`, one state dict."""

    def __init__(self, *optimizers: torch.optim.Optimizer) -> None:
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """Every group of every optimizer (the dicts themselves: setting `lr` reaches them)."""
        return [g for opt in self.optimizers for g in opt.param_groups]

    def step(self, closure: Any = None) -> None:
        if closure is not None:
            raise ValueError("Optimizers.step takes no closure")
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for opt, saved in zip(self.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(saved)


@torch.no_grad()
def muon_step(opt: torch.optim.Optimizer) -> None:
    """One step of torch's Muon `opt`, its same-shaped matrices orthogonalised together:
    momentum (Nesterov or not), Newton-Schulz orthogonalisation in bf16 (torch's coefficients,
    steps and eps, each matrix scaled to unit Frobenius norm first), the learning rate adjusted
    to the shape as torch does, decoupled weight decay. Its state dict stays torch's.

    Matrices are stacked by their shape in the wide orientation (rows <= columns), across
    groups: an MLP's (C, 4C) input and (4C, C) output matrices go in one batch. The
    iteration is per matrix, so stacking changes no value; it only runs fewer, larger
    products (the speedrun model's Newton-Schulz work 4.3 -> 3.6 ms a step,
    docs/BENCHMARKS.md)."""
    from torch.optim._muon import _adjust_lr  # the rate rule itself, not a copy of it

    # (wide shape, dtype, Newton-Schulz settings) -> [(group, param, grad, buffer, tall)]: the
    # Nesterov update is made batch by batch, so one batch's copies are alive at a time
    batches: dict[tuple[Any, ...], list[tuple[Any, ...]]] = {}
    for group in opt.param_groups:
        params: list[torch.Tensor] = []
        grads: list[torch.Tensor] = []
        bufs: list[torch.Tensor] = []
        opt._init_group(group, params, grads, bufs)  # momentum buffers created as torch does
        if any(p.grad.ndim != 2 for p in params):
            raise ValueError("Muon optimizes 2-D matrices only")
        momentum = group["momentum"]
        if bufs:
            torch._foreach_lerp_(bufs, grads, 1 - momentum)
        ns = (tuple(group["ns_coefficients"]), group["ns_steps"], group["eps"])
        for p, g, buf in zip(params, grads, bufs, strict=True):
            tall = p.size(0) > p.size(1)
            wide = (p.size(1), p.size(0)) if tall else tuple(p.shape)
            batches.setdefault((*wide, p.dtype, ns), []).append((group, p, g, buf, tall))
    for (rows, cols, _, ns), items in batches.items():
        # each update cast to bf16 straight into its slot of the stack (torch casts, then
        # transposes a tall one: the same values), one pass instead of a stack and a cast
        stack = torch.empty(len(items), rows, cols, dtype=torch.bfloat16, device=items[0][1].device)
        for slot, (group, _, g, buf, tall) in zip(stack, items, strict=True):
            # (torch's own step, for bf16 weights without Nesterov, also divides its momentum
            # buffer in place by the norm, `grad.bfloat16()` being the buffer itself; not here)
            update = g.lerp(buf, group["momentum"]) if group["nesterov"] else buf
            slot.copy_(update.t() if tall else update)
        ortho = _newton_schulz(stack, *ns)
        del stack
        for (group, p, _, _, tall), o in zip(items, ortho, strict=True):
            lr = float(group["lr"])
            rate = _adjust_lr(lr, group["adjust_lr_fn"], p.shape)
            if group["weight_decay"]:  # a factor of exactly 1 changes nothing: no pass
                p.mul_(1 - lr * group["weight_decay"])
            p.add_(o.t() if tall else o, alpha=-rate)


def _newton_schulz(
    x: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float
) -> torch.Tensor:
    """torch's quintic Newton-Schulz iteration on a bf16 stack of wide matrices (n, rows, cols),
    rows <= cols, at once, each scaled to Frobenius norm <= 1 first (`x` is overwritten)."""
    a, b, c = coefficients
    norms = torch.linalg.vector_norm(x, dim=(1, 2))  # each matrix's, as torch's m.norm()
    x = x.div_(norms.clamp_(min=eps)[:, None, None])
    for _ in range(steps):
        gram = x @ x.transpose(1, 2)
        update = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.baddbmm(x, update, x, beta=a)
    return x


def is_hidden_matrix(name: str, p: torch.Tensor) -> bool:
    """A 2-D weight inside a block (attention, MLP): what Muon optimizes."""
    return p.dim() == 2 and name.startswith("transformer.h.")


def make_optimizer(
    model: torch.nn.Module, cfg: Config, device: torch.device
) -> torch.optim.Optimizer | Optimizers:
    """The optimizer `cfg.train.optimizer` names, its groups set up as the module docstring says."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    t = cfg.train
    check_optimizer(t.optimizer)
    if t.optimizer == "muon":
        hidden = [p for n, p in named if is_hidden_matrix(n, p)]
        rest = [p for n, p in named if not is_hidden_matrix(n, p)]
        shapes = list(dict.fromkeys(tuple(p.shape) for p in hidden))  # one group per shape
        muon_groups = [[p for p in hidden if tuple(p.shape) == s] for s in shapes]
        muon = muon_class()(
            [{"params": ps, **settings("muon", ps, cfg)} for ps in muon_groups], lr=t.muon_lr
        )
        return Optimizers(muon, _adamw(rest, cfg, device))
    params = [p for _, p in named]
    if t.optimizer == "sgd":
        return without_dynamo(torch.optim.SGD)(
            _decay_groups("sgd", params, cfg), lr=t.lr, momentum=t.momentum, nesterov=True
        )
    return _adamw(params, cfg, device)


def _decay_groups(kind: str, params: list[torch.Tensor], cfg: Config) -> list[dict[str, Any]]:
    """Matrices (decayed) first, then vectors (biases and gains), each in model order: the
    order every checkpoint's AdamW state was saved in."""
    matrices = [p for p in params if p.dim() >= 2]
    vectors = [p for p in params if p.dim() < 2]
    return [{"params": ps, **settings(kind, ps, cfg)} for ps in (matrices, vectors) if ps]


def _adamw(params: list[torch.Tensor], cfg: Config, device: torch.device) -> torch.optim.AdamW:
    # one fused kernel instead of a chain of foreach ops: on a CPU the step is ~6x faster
    fused = device.type in ("cuda", "cpu")
    groups = _decay_groups("adamw", params, cfg)
    return without_dynamo(torch.optim.AdamW)(groups, lr=cfg.train.lr, fused=fused)


def settings(kind: str, params: list[torch.Tensor], cfg: Config) -> dict[str, Any]:
    """A group's hyperparameters from the config: the one rule used when the optimizer is made
    and again when a checkpoint's optimizer is restored (so given flags take effect)."""
    t = cfg.train
    decay = t.weight_decay if params[0].dim() >= 2 else 0.0  # a group holds one kind
    if kind == "adamw":
        return {"weight_decay": decay, "betas": (t.beta1, t.beta2)}
    if kind == "sgd":
        return {"weight_decay": decay, "momentum": t.momentum}
    # Muon scales a matrix's step by sqrt(max(1, out / in)) (Keller Jordan's rule, on
    # nn.Linear's (out, in) layout). torch reads our (in, out) weights the other way round,
    # so the group's rate undoes torch's factor and applies the intended one; its decay is
    # divided by the same fix, since torch decays by rate * weight_decay (muon_lr * decay).
    n_in, n_out = params[0].shape
    fix = math.sqrt(max(1.0, n_out / n_in)) / math.sqrt(max(1.0, n_in / n_out))
    return {
        "weight_decay": decay / fix,
        "momentum": t.momentum,
        "lr_scale": t.muon_lr / t.lr * fix,
    }


def _kind(opt: torch.optim.Optimizer) -> str:
    muon = muon_class()
    if muon is not None and isinstance(opt, muon):
        return "muon"
    return "sgd" if isinstance(opt, torch.optim.SGD) else "adamw"


def set_hyperparameters(optimizer: torch.optim.Optimizer | Optimizers, cfg: Config) -> None:
    """Put the config's hyperparameters into a (restored) optimizer's groups, so that values
    given on `--resume` (betas, weight decay, momentum, muon_lr) take effect instead of those
    saved in its state."""
    parts = optimizer.optimizers if isinstance(optimizer, Optimizers) else (optimizer,)
    for opt in parts:
        for group in opt.param_groups:
            group.update(settings(_kind(opt), group["params"], cfg))


def restore_optimizer(
    optimizer: torch.optim.Optimizer | Optimizers, state: dict[str, Any], saved: str, cfg: Config
) -> None:
    """Load a checkpoint's optimizer state (`saved`: the optimizer it was trained with), then
    the config's hyperparameters on top. Another optimizer cannot take over the state."""
    if saved != cfg.train.optimizer:
        raise MyGPT2Error(
            f"the checkpoint was trained with --optimizer {saved}; it cannot resume with "
            f"--optimizer {cfg.train.optimizer} (the optimizer's state does not carry over). "
            f"Resume with --optimizer {saved}, or start a new run in another --out_dir."
        )
    optimizer.load_state_dict(state)
    set_hyperparameters(optimizer, cfg)
