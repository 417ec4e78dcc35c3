"""Text generation with a KV cache: prefill the prompt once, then one token per step.

Sampling options: greedy (`temperature=0`), temperature, top-k, top-p (nucleus), a seed for
reproducible draws, stop tokens, and a batch of prompts of different lengths (left-padded and
masked, see `KVCache`). The cache is generation's: the model only reads and advances it.

Past the context length `T` the model keeps the last `T` tokens as its window. GPT-2 has
absolute position embeddings, so when the window slides every position shifts and the cached
keys/values are no longer valid: once the cache is full it is rebuilt from the window at each
step. The result is exactly what a cache-free model that crops its input to the last `T` tokens
computes (tested), at the price of a full forward pass per token beyond `T`.

The settings are checked by `mygpt2.sampling_settings.check_sampling`, the one check that the
config and the server use too: top_k 0 or None and top_p 1.0 or None are off.

Steering (`steer=[(sae, feature, alpha), ...]`) adds `alpha * sae.W_dec[feature]` to the
activation at `sae.cfg.hook_name`, at every position (the prompt's too), through the model's
hook points: under the KV cache each step's new position is steered as it is computed, and the
cached keys and values of earlier positions already were, so cached and cache-free generation
agree (tested). Any object with `cfg.hook_name`, `cfg.d_in`, `cfg.d_sae` and `W_dec`
(d_sae, d_in) steers. Entries are checked before the first token: the feature id against
`d_sae`, then the hook and `d_in` against the model by `mygpt2.sae.check_fits` (the width the
model's own forward gives that hook). At a hook with heads the direction is read as
(n_heads, head_size), as the SAE reads the activation.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch

from mygpt2.config import ModelConfig
from mygpt2.errors import MyGPT2Error
from mygpt2.model import GPT, Linear
from mygpt2.packing import can_pack, pack_weight
from mygpt2.sampling_settings import check_sampling as check_sampling  # the one check


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw one token id per row from `logits` (B, V). `temperature=0` means greedy.

    Top-k keeps the k most likely tokens; top-p then keeps the smallest set of those, in order of
    probability, whose mass reaches `top_p`. The draw is made among the kept candidates only:
    drawing from the full vocabulary (50257 ids) costs more than the small model's forward pass.
    """
    logits = logits.float()
    if temperature == 0:
        # max's index is argmax's (the first of equal maxima, a NaN's where one is) at less
        # than half its time on a CPU over GPT-2's vocabulary (28 against 64 us a row)
        return logits.max(dim=-1).indices
    logits = logits / temperature
    candidates = None  # (B, n) vocabulary ids of the columns of `logits`; None: all ids
    if top_k is not None and top_k < logits.size(-1):
        logits, candidates = torch.topk(logits, top_k, dim=-1)  # sorted, most likely first
    if top_p is not None and top_p < 1.0:
        if candidates is None:
            logits, candidates = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(logits, dim=-1)
        # drop a token when the tokens ranked above it already reach top_p; the first stays
        mass_before = torch.cumsum(probs, dim=-1) - probs
        logits = logits.masked_fill(mass_before >= top_p, float("-inf"))
    choice = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)  # (B, 1)
    if candidates is not None:
        choice = candidates.gather(-1, choice)
    return choice.squeeze(-1)


def _as_rows(prompts: Sequence[int] | Sequence[Sequence[int]] | torch.Tensor) -> list[list[int]]:
    if isinstance(prompts, torch.Tensor):
        return prompts.view(1, -1).tolist() if prompts.dim() == 1 else prompts.tolist()
    if len(prompts) > 0 and isinstance(prompts[0], int):
        return [list(prompts)]  # a single prompt
    return [list(p) for p in prompts]


@dataclass
class KVCache:
    """Keys and values of every layer for the tokens seen so far, preallocated to `T`.

    `pad` holds, per row, how many left-padding tokens the row starts with (0 for a batch of
    equal-length prompts). Padding keys are masked out and positions count from the first
    real token, so a left-padded row gives the same logits as the row alone.
    """

    k: torch.Tensor  # (n_layers, B, nh, T, hs)
    v: torch.Tensor  # (n_layers, B, nh, T, hs)
    pad: torch.Tensor  # (B,) int64
    length: int = 0  # tokens already cached
    # Optional (n_emb, vocab_size) copy of the output head, transposed. On CPUs a one-token
    # step is a vector-matrix product, and MKL runs it several times faster with the vocabulary
    # along the contiguous axis; the head is the largest matrix, so generation keeps this copy.
    # For bf16 weights on CPUs with native bf16 it is the head packed by `packing.pack_weight`.
    head: torch.Tensor | None = None
    # Every block weight packed for oneDNN (bf16 on CPUs with native bf16, `mygpt2.packing`),
    # keyed by its `Linear`: the model's modules read it from here (a `GenerationWeights`'
    # read-only mapping, shared by the generations given that set), so no weights are left
    # on the model.
    packed: Mapping[torch.nn.Module, torch.Tensor] = field(default_factory=dict)
    _pending: int = 0  # tokens written by the current forward, committed by advance()

    @classmethod
    def empty(
        cls, cfg: ModelConfig, batch: int, device: torch.device, dtype: torch.dtype
    ) -> KVCache:
        """A cache for `batch` rows and up to `cfg.T` tokens."""
        hs = cfg.n_emb // cfg.n_heads
        shape = (cfg.n_layers, batch, cfg.n_heads, cfg.T, hs)
        return cls(
            k=torch.empty(shape, device=device, dtype=dtype),
            v=torch.empty(shape, device=device, dtype=dtype),
            pad=torch.zeros(batch, dtype=torch.long, device=device),
        )

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's keys/values for `layer`; return all keys/values so far."""
        t = k.shape[2]
        end = self.length + t
        keys, values = self.k[layer], self.v[layer]  # (B, nh, T, hs) views
        keys.narrow(2, self.length, t).copy_(k)  # narrow: fewer ops than slice indexing
        values.narrow(2, self.length, t).copy_(v)
        self._pending = t
        return keys.narrow(2, 0, end), values.narrow(2, 0, end)

    def advance(self) -> None:
        """Commit the tokens written by the last forward pass."""
        self.length += self._pending
        self._pending = 0

    def causal_mask(self, t: int, device: torch.device) -> torch.Tensor:
        """Boolean (t, length + t) mask: new token i sees every cached key and new keys <= i."""
        S = self.length + t
        rows = torch.arange(t, device=device)[:, None] + self.length
        return torch.arange(S, device=device)[None, :] <= rows

    @property
    def capacity(self) -> int:
        return self.k.shape[3]


@dataclass(frozen=True, eq=False)  # compared by identity: it holds tensors
class GenerationWeights:
    """A model's weights in the layouts a one-token step reads fastest on a CPU, made by
    `generation_weights`: for bf16 weights on CPUs with native bf16 every block weight and the
    output head packed for oneDNN, on other CPUs the output head transposed; nothing on a GPU.

    Making them copies the weights (0.2 s for GPT-2 124M in bf16, about a tenth of a
    200-token generation), so `generate_stream` makes them per call unless given a set:
    `mygpt2 serve` and `mygpt2 sample` make one when the model is loaded and pass it to every
    generation. A set is a snapshot: a generation given one made before the weights it copied
    changed (a step of mygpt2's optimizers, `load_state_dict`, `model.to(...)`) stops with an
    error instead of running on the old weights. The check reads each weight's version
    counter, which writes through `weight.data` and the fused kernels of a torch optimizer
    of your own (`fused=True`) leave alone: make a new set after those. Held by a server, a set
    keeps its copies for the server's life (as much again as the bf16 weights; on other CPUs
    the output head, 154 MB for GPT-2 124M in float32)."""

    packed: Mapping[torch.nn.Module, torch.Tensor]  # keyed by the model's `Linear` modules
    head: torch.Tensor | None
    # each copied weight with what identified its values then: its module path, its version
    # counter (bumped by in-place writes), where its data lives and its dtype (`.to()` moves)
    sources: tuple[tuple[str, int, int, torch.dtype], ...]

    def stale(self, model: GPT) -> bool:
        """Whether the weights these were copied from are no longer `model`'s as they were."""
        return self.sources != _identities(model, [name for name, *_ in self.sources])


def _identities(model: GPT, names: list[str]) -> tuple[tuple[str, int, int, torch.dtype], ...]:
    weights = dict(model.named_parameters(remove_duplicate=False))
    found = [(n, weights.get(n)) for n in names]
    return tuple(
        (n, -1, 0, torch.float32) if w is None else (n, w._version, w.data_ptr(), w.dtype)
        for n, w in found
    )


def generation_weights(model: GPT) -> GenerationWeights:
    """`model`'s weights laid out for one-token steps (see `GenerationWeights`)."""
    cfg, weight = model.config, model.transformer.wte.weight
    packed: dict[torch.nn.Module, torch.Tensor] = {}
    head, copied = None, []
    if can_pack(weight):
        for name, m in model.named_modules():
            if isinstance(m, Linear):
                packed[m] = pack_weight(m.weight.detach().t())
                copied.append(f"{name}.weight")
        head = pack_weight(model.lm_head.weight.detach()[: cfg.vocab_size])
        copied.append("lm_head.weight")
    elif weight.device.type == "cpu":
        head = model.lm_head.weight.detach()[: cfg.vocab_size].t().contiguous()
        copied.append("lm_head.weight")
    # read-only: every generation's cache holds this one mapping
    return GenerationWeights(MappingProxyType(packed), head, _identities(model, copied))


def new_cache(model: GPT, pad: torch.Tensor, weights: GenerationWeights | None = None) -> KVCache:
    """An empty KV cache for rows left-padded by `pad`, holding `weights` (by default made
    now by `generation_weights`) for the model's modules to read."""
    if weights is None:
        weights = generation_weights(model)
    elif weights.stale(model):
        raise MyGPT2Error(
            "the generation weights were made before the model's weights changed (or for "
            "another model); make them again with generation_weights(model)."
        )
    weight = model.transformer.wte.weight
    cache = KVCache.empty(model.config, len(pad), weight.device, weight.dtype)
    cache.pad = pad
    cache.packed, cache.head = weights.packed, weights.head
    return cache


# ------------------------------------------------------------------------------ steering
def _adder(direction: torch.Tensor) -> Callable[[torch.Tensor, str], torch.Tensor]:
    """A hook adding `direction` (d_in,) at every position, shaped like one position of the
    activation ((n_heads, head_size) at hook_z) and cast once to each dtype and device."""
    cast: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}

    def steer(x: torch.Tensor, name: str) -> torch.Tensor:
        key = (x.dtype, x.device)
        if key not in cast:
            cast[key] = direction.to(device=x.device, dtype=x.dtype).reshape(x.shape[2:])
        return x + cast[key]

    return steer


def _steer_entry(entry: Any) -> tuple[Any, int, float]:
    if not (isinstance(entry, (tuple, list)) and len(entry) == 3):
        got = f"{len(entry)} items" if isinstance(entry, (tuple, list)) else type(entry).__name__
        raise MyGPT2Error(f"steer takes (sae, feature, alpha) triples; got {got}.")
    sae, feature, alpha = entry
    cfg = getattr(sae, "cfg", None)
    if cfg is None or not hasattr(sae, "W_dec"):
        raise MyGPT2Error(
            f"steer: {type(sae).__name__} is no SAE (load one with mygpt2.sae.load(DIR))."
        )
    from mygpt2.sae.model import check_feature  # the one feature check

    try:
        check_feature(feature, cfg.d_sae)
    except MyGPT2Error as e:
        raise MyGPT2Error(f"steer at '{cfg.hook_name}': {e}") from None
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise MyGPT2Error(f"steer: alpha is a finite number, got {alpha!r}.")
    return sae, feature, float(alpha)


def steering_hooks(model: GPT, steer: Sequence[Any]) -> list[tuple[str, Any]]:
    """Forward hooks adding `alpha * sae.W_dec[feature]` at each entry's hook (entries on one
    hook summed into one vector), after checking every entry against `model`."""
    from mygpt2.sae.splice import check_fits  # the one fit check: hook name and d_in

    directions: dict[str, torch.Tensor] = {}
    for entry in steer:
        sae, feature, alpha = _steer_entry(entry)
        name = sae.cfg.hook_name
        if name not in directions:
            check_fits(model, sae)
        vector = sae.W_dec[feature].detach().float() * alpha
        directions[name] = directions[name] + vector if name in directions else vector
    # a zero vector (alpha 0, or entries that cancel) adds no hook: the plain forward, exactly
    # (at a norm's hook points even a zero edit takes the written-out norm, which rounds
    # differently in bf16)
    return [(name, _adder(v)) for name, v in directions.items() if bool(v.any())]


@torch.inference_mode()
def generate_stream(
    model: GPT,
    prompts: Sequence[int] | Sequence[Sequence[int]] | torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop_tokens: Sequence[int] = (),
    use_cache: bool = True,
    steer: Sequence[tuple[Any, int, float]] = (),
    weights: GenerationWeights | None = None,
) -> Iterator[torch.Tensor]:
    """Yield a (B,) tensor of next-token ids per step, as soon as they are sampled.

    A row that produced a stop token yields -1 from then on; the stream ends when every row
    has stopped or after `max_new_tokens` steps. Prompts longer than `T` are cropped from the
    left with a warning. `steer`: (sae, feature, alpha) entries, each adding
    `alpha * sae.W_dec[feature]` at the SAE's hook while generating (the hooks stay installed
    until the stream ends or is closed). `weights`: the model's `GenerationWeights`, made once
    by a caller that generates many times (by default made per call).
    """
    cfg = model.config
    settings = check_sampling(temperature, top_k, top_p, cfg.vocab_size)
    temperature, top_k, top_p = settings.temperature, settings.top_k, settings.top_p
    if max_new_tokens < 0:
        raise MyGPT2Error(f"max_new_tokens must be 0 or more, got {max_new_tokens}.")
    rows = _as_rows(prompts)
    if not rows or any(len(r) == 0 for r in rows):
        raise MyGPT2Error(
            "empty prompt: give at least one token (for example the <|endoftext|> id)."
        )
    for r in rows:
        bad = [t for t in r if not 0 <= t < cfg.vocab_size]
        if bad:
            raise MyGPT2Error(
                f"prompt token id {bad[0]} is outside the vocabulary (0..{cfg.vocab_size - 1})."
            )
    if any(len(r) > cfg.T for r in rows):
        longest = max(len(r) for r in rows)
        warnings.warn(
            f"prompt of {longest} tokens is longer than the context length T={cfg.T}; "
            f"keeping its last {cfg.T} tokens.",
            stacklevel=2,
        )
        rows = [r[-cfg.T :] for r in rows]

    device = model.transformer.wte.weight.device
    B, L = len(rows), max(len(r) for r in rows)
    pad = torch.tensor([L - len(r) for r in rows], dtype=torch.long, device=device)
    if not use_cache and bool(pad.any()):
        raise MyGPT2Error("prompts of different lengths need use_cache=True.")
    tokens = torch.tensor([[0] * (L - len(r)) + r for r in rows], dtype=torch.long, device=device)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
    stops = torch.tensor(list(stop_tokens), dtype=torch.long, device=device)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    steering = steering_hooks(model, steer) if steer else []

    with contextlib.ExitStack() as stack:
        stack.callback(model.train, model.training)  # back to the caller's mode at the end
        model.eval()
        if steering:
            stack.enter_context(model.hooks(steering))
        cache = new_cache(model, pad, weights) if use_cache else None
        logits, _ = model(tokens, cache=cache)
        for _ in range(max_new_tokens):
            nxt = sample_next(logits[:, -1], temperature, top_k, top_p, generator)
            if stops.numel():  # rows can only finish on a stop token
                nxt = nxt.masked_fill(finished, -1)
            yield nxt
            if stops.numel():
                finished |= torch.isin(nxt, stops)
                if bool(finished.all()):
                    return
            tokens = torch.cat([tokens, nxt.clamp(min=0)[:, None]], dim=1)
            if cache is None:
                logits, _ = model(tokens[:, -cfg.T :])
            elif cache.length < cfg.T:
                logits, _ = model(tokens[:, -1:], cache=cache)
            else:
                # the window slides: positions shift, so rebuild the cache from the last T tokens
                cut = tokens.size(1) - cfg.T
                tokens = tokens[:, cut:]
                cache.pad = (cache.pad - cut).clamp(min=0)
                cache.length = 0
                logits, _ = model(tokens, cache=cache)


def generate(
    model: GPT,
    prompts: Sequence[int] | Sequence[Sequence[int]] | torch.Tensor,
    max_new_tokens: int,
    **sampling,
) -> list[list[int]]:
    """New tokens for every prompt (stop tokens excluded); options as in `generate_stream`."""
    rows = len(_as_rows(prompts))
    out: list[list[int]] = [[] for _ in range(rows)]
    stops = set(sampling.get("stop_tokens", ()))
    done = [False] * rows
    for step in generate_stream(model, prompts, max_new_tokens, **sampling):
        for i, tok in enumerate(step.tolist()):
            if done[i] or tok < 0:
                continue
            if tok in stops:
                done[i] = True
            else:
                out[i].append(tok)
    return out
