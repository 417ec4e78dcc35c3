"""Named hook points: see and edit a model's activations by TransformerLens's names.

    logits, cache = model.run_with_cache(idx, names="blocks.*.hook_resid_post")
    cache["blocks.0.hook_resid_post"]         # (B, T, n_emb)
    cache.stack("hook_resid_post")            # (n_layers, B, T, n_emb)
    logits = model.run_with_hooks(idx, fwd_hooks=[("blocks.1.attn.hook_z", fn)])
    with model.hooks(fwd_hooks=[("blocks.*.hook_resid_post", steer)]):
        ids = mygpt2.generate(model, prompt, 20)    # the hook runs at every decoding step

A hook is `fn(activation, name)`: it returns None to observe, or a tensor of the same shape and
dtype to replace the activation. A hook with a parameter named `pos` is also given `pos`, the
range of sequence positions the activation's position axis holds (under the KV cache a
decoding step sees one position: `range(n, n + 1)`).

Design choices:
- The model carries one attribute, `active_hooks`: None, or a `Hooks` table (name -> functions).
  `GPT.forward` passes it down and checks `if hooks is not None` at each point, so a model
  without hooks runs exactly the code it runs without this module (SDPA attention, the fused
  loss). Attention scores and patterns, and the LayerNorm scale, are computed explicitly only
  when a hook asks for them.
- Names are TransformerLens's (`blocks.3.attn.hook_pattern`, `ln_final.hook_scale`), so code
  and habits carry over; `hook_names(n_layers)` lists them in the order a forward reaches them.
- Names are checked when hooks are installed, not when they (fail to) fire: an unknown name,
  a layer the model lacks, or a glob that matches nothing is a `MyGPT2Error` that lists close
  names. A hook's return value is checked where it is used, and named in the message.
- Installing is a context manager that restores the previous table on exit, also when a hook
  or the forward raises: a failing hook never leaves hooks installed.
- `ActivationCache` is a read-only mapping; with `grad=True` the kept activations retain their
  gradients, read with `cache.grad(name)` after `backward()`.
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import inspect
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch

from mygpt2.errors import MyGPT2Error

# the points of one block, in the order a forward reaches them
BLOCK_HOOKS = (
    "hook_resid_pre",
    "ln1.hook_scale",
    "ln1.hook_normalized",
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_v",
    "attn.hook_attn_scores",
    "attn.hook_pattern",
    "attn.hook_z",
    "hook_attn_out",
    "hook_resid_mid",
    "ln2.hook_scale",
    "ln2.hook_normalized",
    "mlp.hook_pre",
    "mlp.hook_post",
    "hook_mlp_out",
    "hook_resid_post",
)
FINAL_HOOKS = (
    "ln_final.hook_scale",
    "ln_final.hook_normalized",
    "ln_final.hook_out",
    "hook_logits",
)

HookFn = Callable[..., "torch.Tensor | None"]  # fn(activation, name) or fn(activation, name, pos)


def hook_names(
    n_layers: int, pos_emb: str = "learned", mlp: str = "gelu", qk_norm: bool = False
) -> list[str]:
    """Every hook point of a model with `n_layers` blocks, in the order a forward reaches them.

    Architecture variants change the list as they do in TransformerLens: no `hook_pos_embed`
    without learned position embeddings; with qk_norm, `attn.q_norm.hook_out` /
    `attn.k_norm.hook_out` (each head's queries and keys after their RMSNorm); with rope,
    `attn.hook_rot_q` / `attn.hook_rot_k` (after the rotation; `hook_q` / `hook_k` are before
    it); with swiglu, `mlp.hook_pre_linear` (the ungated half; `hook_pre` is the gate's input).
    The last of these that a model has holds the queries and keys attention multiplies."""
    block = list(BLOCK_HOOKS)
    at = block.index("attn.hook_v") + 1
    if pos_emb == "rope":
        block[at:at] = ["attn.hook_rot_q", "attn.hook_rot_k"]
    if qk_norm:
        block[at:at] = ["attn.q_norm.hook_out", "attn.k_norm.hook_out"]
    if mlp == "swiglu":
        at = block.index("mlp.hook_pre") + 1
        block[at:at] = ["mlp.hook_pre_linear"]
    blocks = [f"blocks.{i}.{suffix}" for i in range(n_layers) for suffix in block]
    embeds = ["hook_embed", "hook_pos_embed"] if pos_emb == "learned" else ["hook_embed"]
    return [*embeds, *blocks, *FINAL_HOOKS]


def _is_glob(name: str) -> bool:
    return any(c in name for c in "*?[")


def _unknown_name(name: str, names: list[str], n_layers: int) -> MyGPT2Error:
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
    if m and m[2] in BLOCK_HOOKS and int(m[1]) >= n_layers:
        return MyGPT2Error(
            f"no hook point '{name}': the model has {n_layers} layers, blocks.0 to "
            f"blocks.{n_layers - 1}."
        )
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    hint = f" Close names: {', '.join(close)}." if close else ""
    return MyGPT2Error(
        f"unknown hook name '{name}'.{hint} model.hook_names() lists all {len(names)} names "
        "(globs such as 'blocks.*.hook_resid_post' match several)."
    )


def resolve_names(spec: Any, n_layers: int, names: list[str] | None = None) -> list[str]:
    """The hook names `spec` selects, in forward order: None (all of them), a name, a glob, a
    predicate on names, or a list of names and globs. Anything that selects nothing is an error.
    `names` is the model's list (`model.hook_names()`); by default a GPT-2's of `n_layers`."""
    names = hook_names(n_layers) if names is None else names
    if spec is None:
        return names
    if callable(spec) and not isinstance(spec, str):
        chosen = {n for n in names if spec(n)}
        if not chosen:
            raise MyGPT2Error("the names predicate accepts no hook name (see model.hook_names()).")
        return [n for n in names if n in chosen]
    if isinstance(spec, str):
        spec = [spec]
    if not isinstance(spec, Sequence) or not all(isinstance(s, str) for s in spec):
        raise MyGPT2Error(
            f"hook names are a name, a glob, a list of those, or a predicate; got {spec!r}."
        )
    chosen = set()
    for s in spec:
        if _is_glob(s):
            matched = fnmatch.filter(names, s)
            if not matched:
                raise MyGPT2Error(
                    f"'{s}' matches no hook name of this {n_layers}-layer model; "
                    "model.hook_names() lists them."
                )
            chosen.update(matched)
        elif s in names:
            chosen.add(s)
        else:
            raise _unknown_name(s, names, n_layers)
    return [n for n in names if n in chosen]


def _fn_label(fn: Callable) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__name__


def _takes_pos(fn: Callable) -> bool:
    code = getattr(fn, "__code__", None)
    if code is not None:  # a function or method: read its parameter names, much faster
        return "pos" in code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
    try:
        return "pos" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # some builtins have no signature
        return False


class Hooks:
    """The hooks active on one model: for each hook name, the functions to call, in order.

    `model.forward` calls `hooks(name, x)` at each point and uses what comes back; `wants(name)`
    tells it whether to compute a value that only hooks need (scores, pattern, LayerNorm scale).
    """

    def __init__(self, table: dict[str, list[tuple[HookFn, bool]]]):
        self.table = table
        self.positions = range(0)  # set by the model at each forward

    def wants(self, *names: str) -> bool:
        """Whether a hook is on any of `names`."""
        return any(name in self.table for name in names)

    def changed(self, name: str, x: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """`self(name, x)`, and whether a hook changed the value: replaced it, or wrote into it
        in place (tensors made under inference mode keep no version counter: there any hook
        counts as a change). Where the model can give a fused kernel's output instead of the
        written-out one, only a change calls for the written-out form."""
        if name not in self.table:
            return x, False
        version = None if x.is_inference() else x._version
        out = self(name, x)
        return out, out is not x or version is None or x._version != version

    def __call__(self, name: str, x: torch.Tensor) -> torch.Tensor:
        fns = self.table.get(name)
        if fns is None:
            return x
        for fn, takes_pos in fns:
            out = fn(x, name, pos=self.positions) if takes_pos else fn(x, name)
            if out is None:
                continue
            if not isinstance(out, torch.Tensor):
                raise MyGPT2Error(
                    f"hook {_fn_label(fn)} on '{name}' returned {type(out).__name__}: return None "
                    f"to observe, or a tensor of shape {tuple(x.shape)} to replace the activation."
                )
            if out.shape != x.shape or out.dtype != x.dtype or out.device != x.device:
                raise MyGPT2Error(
                    f"hook {_fn_label(fn)} on '{name}' returned a {_describe(out)} tensor; "
                    f"expected {_describe(x)}, as the activation it replaces."
                )
            x = out
        return x


def _describe(t: torch.Tensor) -> str:
    dtype = str(t.dtype).removeprefix("torch.")
    return f"{tuple(t.shape)} {dtype} on {t.device}"


def _hook_table(
    fwd_hooks: Any, n_layers: int, names: list[str]
) -> dict[str, list[tuple[HookFn, bool]]]:
    table: dict[str, list[tuple[HookFn, bool]]] = {}
    if isinstance(fwd_hooks, tuple) and len(fwd_hooks) == 2 and callable(fwd_hooks[1]):
        fwd_hooks = [fwd_hooks]  # a single (name, fn) pair
    for entry in fwd_hooks:
        if not (isinstance(entry, (tuple, list)) and len(entry) == 2 and callable(entry[1])):
            raise MyGPT2Error(
                f"fwd_hooks holds (name_or_glob, fn) pairs, fn(activation, name); got {entry!r}."
            )
        spec, fn = entry
        takes_pos = _takes_pos(fn)  # once per function: inspect.signature is slow
        for name in resolve_names(spec, n_layers, names):
            table.setdefault(name, []).append((fn, takes_pos))
    return table


@contextlib.contextmanager
def installed(model: Any, fwd_hooks: Any = ()) -> Iterator[Any]:
    """Run the body with `fwd_hooks` active on `model` (after any already active); on exit,
    normal or not, the model's previous hooks come back."""
    # checked before anything changes
    new = _hook_table(fwd_hooks, model.config.n_layers, model.hook_names())
    previous = model.active_hooks
    table = {name: list(fns) for name, fns in (previous.table if previous else {}).items()}
    for name, fns in new.items():
        table.setdefault(name, []).extend(fns)
    model.active_hooks = Hooks(table) if table else None
    try:
        yield model
    finally:
        model.active_hooks = previous


def as_tokens(model: Any, idx: Any) -> torch.Tensor:
    """`idx` (ids as a list, a list of rows, or a 1-D/2-D tensor) as a (B, T) LongTensor on the
    model's device, checked against the vocabulary and the context length."""
    if not isinstance(idx, torch.Tensor):
        try:
            idx = torch.tensor(idx, dtype=torch.long)
        except (TypeError, ValueError):
            raise MyGPT2Error(
                "token ids must be a list of ints, a list of equal-length rows, or a tensor."
            ) from None
    if idx.dim() == 1:
        idx = idx[None]
    cfg = model.config
    if idx.dim() != 2 or idx.dtype.is_floating_point or idx.dtype.is_complex:
        raise MyGPT2Error(
            f"token ids must be integers shaped (T,) or (B, T); got {idx.dtype} {tuple(idx.shape)}."
        )
    if idx.shape[1] == 0:
        raise MyGPT2Error("no tokens: give at least one token id.")
    if idx.shape[1] > cfg.T:
        raise MyGPT2Error(
            f"{idx.shape[1]} tokens are more than the model's context length T={cfg.T}; "
            f"shorten the text to at most {cfg.T} tokens."
        )
    low, high = torch.aminmax(idx)  # one pass; the offending id is looked for only on error
    if low < 0 or high >= cfg.vocab_size:
        bad = idx[(idx < 0) | (idx >= cfg.vocab_size)]
        raise MyGPT2Error(
            f"token id {bad[0].item()} is outside the vocabulary (0..{cfg.vocab_size - 1})."
        )
    return idx.long().to(model.transformer.wte.weight.device)


def run_with_hooks(model: Any, idx: Any, fwd_hooks: Any = ()) -> torch.Tensor:
    """The logits (B, T, vocab) of a forward with `fwd_hooks` active."""
    tokens = as_tokens(model, idx)
    with installed(model, fwd_hooks):
        logits, _ = model(tokens)
    return logits


def run_with_cache(
    model: Any, idx: Any, names: Any = None, grad: bool = False
) -> tuple[torch.Tensor, ActivationCache]:
    """The logits and the activations at `names` (default: every hook point) of one forward.

    Without `grad` the forward runs under `torch.no_grad()`. With `grad=True` it builds the
    graph and the kept activations retain their gradients: `loss.backward()`, then
    `cache.grad(name)`. Hooks already active (`with model.hooks(...)`) run first, so the cache
    holds what flows on after them."""
    tokens = as_tokens(model, idx)
    wanted = resolve_names(names, model.config.n_layers, model.hook_names())
    kept: dict[str, torch.Tensor] = {}

    def keep(x: torch.Tensor, name: str) -> None:
        if grad and x.requires_grad:
            x.retain_grad()
        kept[name] = x if grad else x.detach()

    with torch.set_grad_enabled(grad), installed(model, [(wanted, keep)]):
        logits, _ = model(tokens)
    return logits, ActivationCache(kept, model.config.n_layers, grad=grad)


class MissingActivationError(MyGPT2Error, KeyError):
    """A name the cache does not hold (a KeyError, so `in` and `.get` work as for a dict)."""

    def __str__(self) -> str:
        return str(self.args[0])


class ActivationCache(Mapping):
    """The activations of one forward, by hook name: `cache[name]`, `cache.stack(suffix)`,
    `cache.to(device)`, and with `grad=True`, `cache.grad(name)`."""

    def __init__(
        self,
        tensors: dict[str, torch.Tensor],
        n_layers: int,
        grad: bool = False,
        grads: dict[str, torch.Tensor] | None = None,
    ):
        self._tensors = tensors
        self.n_layers = n_layers
        self.has_grad = grad
        self._grads = grads  # gradients copied by to(); None: read them off the tensors

    def _missing(self, name: str) -> MissingActivationError:
        close = difflib.get_close_matches(name, list(self._tensors), n=3, cutoff=0.6)
        hint = f" Close names: {', '.join(close)}." if close else ""
        return MissingActivationError(
            f"the cache holds no '{name}' ({len(self._tensors)} names kept).{hint} Ask for it "
            "with run_with_cache(idx, names=...); model.hook_names() lists every name."
        )

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._tensors:
            raise self._missing(name)
        return self._tensors[name].detach()

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __repr__(self) -> str:
        return f"ActivationCache({len(self)} names, grad={self.has_grad})"

    def stack(self, suffix: str) -> torch.Tensor:
        """One block hook over all layers: `stack("hook_resid_post")` is (n_layers, B, T, C)."""
        suffix = suffix.removeprefix("blocks.*.")
        names = [f"blocks.{i}.{suffix}" for i in range(self.n_layers)]
        missing = [n for n in names if n not in self._tensors]
        if missing:
            if suffix not in BLOCK_HOOKS:
                raise MyGPT2Error(
                    f"'{suffix}' is no block hook; stack takes one of {', '.join(BLOCK_HOOKS)}."
                )
            raise self._missing(missing[0])
        return torch.stack([self[n] for n in names])

    def to(self, device: str | torch.device) -> ActivationCache:
        """A copy with every tensor (and gradient) on `device`."""
        grads = None
        if self.has_grad:
            grads = {n: g.to(device) for n in self._tensors if (g := self._grad_of(n)) is not None}
        moved = {n: t.detach().to(device) for n, t in self._tensors.items()}
        return ActivationCache(moved, self.n_layers, grad=self.has_grad, grads=grads)

    def _grad_of(self, name: str) -> torch.Tensor | None:
        if self._grads is not None:
            return self._grads.get(name)
        return self._tensors[name].grad

    def grad(self, name: str) -> torch.Tensor:
        """d(loss)/d(activation) at `name` after `loss.backward()` (needs grad=True)."""
        if name not in self._tensors:
            raise self._missing(name)
        if not self.has_grad:
            raise MyGPT2Error(
                "this cache keeps no gradients: run_with_cache(idx, grad=True), then call "
                "backward() on a loss computed from its logits."
            )
        g = self._grad_of(name)
        if g is None:
            raise MyGPT2Error(
                f"no gradient at '{name}' yet: call backward() on a loss computed from the "
                "logits (an activation the loss does not depend on has none)."
            )
        return g
