"""Activations streamed from a model through one hook point, shuffled, in training batches.

No activation is written to disk: each block of `buffer_batches` model forwards (of
`model_batch` windows of `context` tokens each) is computed when the stream reaches it, its
rows are shuffled together (tokens of many windows mix, so a batch is not one document's
neighbouring tokens), and training batches of `batch_size` rows are cut from it in order, a
batch crossing into the next block where it must.

Design choices:
- Reproducible from two integers. The position of the stream is (block, offset); block b
  always holds the same windows (window w of the whole stream is window `(a * w + c) mod n`
  of the token file: an affine permutation, every window once per pass, no table) and the
  same shuffle (a generator seeded by (seed, b)). A resumed run recomputes its current block
  and skips `offset` rows, so it reads exactly the rows an uninterrupted run reads, and a
  checkpoint holds no activations.
- The forward stops at the hook: a hook that raises once it has the activation ends the
  forward there (the later blocks and the vocabulary projection are never computed), under
  `torch.no_grad()`, through the model's own hooks API.
- Hook points with heads give n_heads * head_size values per token (`splice.to_rows`).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np
import torch

from mygpt2.errors import MyGPT2Error
from mygpt2.sae.splice import check_hook_name, to_rows


class _ReachedHookError(Exception):
    """Raised by the capturing hook to end a forward at the hook point."""


def _coprime_step(n: int, seed: int) -> int:
    """A multiplier coprime to n, from the seed (the affine window permutation's step)."""
    if n <= 2:
        return 1
    a = (seed * 2654435761 + 40503) % n or 1
    while math.gcd(a, n) != 1:
        a = a % (n - 1) + 1
    return a


def activations(model: Any, hook: str, idx: torch.Tensor) -> torch.Tensor:
    """The activation rows (B * T, width) at `hook` for token windows `idx` (B, T), running the
    forward only as far as the hook, without gradients."""
    got: list[torch.Tensor] = []

    def capture(x: torch.Tensor, _name: str) -> None:
        got.append(to_rows(x))
        raise _ReachedHookError

    hooked = model.hooks(fwd_hooks=[(hook, capture)])
    with torch.no_grad(), hooked, contextlib.suppress(_ReachedHookError):
        model(idx)
    if not got:
        raise MyGPT2Error(f"the forward never reached the hook point '{hook}'.")
    rows = got[0]
    return rows.reshape(-1, rows.shape[-1])


class TokenWindows:
    """Windows of `context` tokens of a token array, in a seeded order that covers each window
    once per pass."""

    def __init__(self, tokens: np.ndarray, context: int, seed: int):
        self.tokens = tokens
        self.context = context
        self.n = len(tokens) // context
        if self.n < 1:
            raise MyGPT2Error(
                f"the data holds {len(tokens)} tokens, fewer than one window of {context}; "
                "use more text or a smaller --context."
            )
        self.step = _coprime_step(self.n, seed)
        self.shift = (seed * 97) % self.n

    def window(self, w: int) -> np.ndarray:
        """The stream's w-th window (w may pass n: later passes repeat the order)."""
        i = (self.step * w + self.shift) % self.n
        return np.asarray(self.tokens[i * self.context : (i + 1) * self.context], dtype=np.int64)

    def batch(self, first: int, count: int) -> torch.Tensor:
        """Windows first .. first + count - 1 as a (count, context) LongTensor."""
        return torch.from_numpy(np.stack([self.window(first + j) for j in range(count)]))


class ActivationStream:
    """Shuffled training batches of activation rows; `state()` / `restore()` resume it."""

    def __init__(
        self,
        model: Any,
        hook: str,
        windows: TokenWindows,
        *,
        batch_size: int,
        model_batch: int = 8,
        buffer_batches: int = 16,
        seed: int = 0,
    ):
        check_hook_name(model, hook)
        self.model, self.hook, self.windows = model, hook, windows
        self.batch_size, self.model_batch = batch_size, model_batch
        self.buffer_batches, self.seed = buffer_batches, seed
        self.block, self.offset = 0, 0
        self._rows: torch.Tensor | None = None  # the current block, shuffled
        self.device = model.transformer.wte.weight.device

    @property
    def windows_per_block(self) -> int:
        return self.model_batch * self.buffer_batches

    @property
    def rows_per_block(self) -> int:
        return self.windows_per_block * self.windows.context

    def state(self) -> dict[str, int]:
        """Where the stream is: the block and the rows of it already given out."""
        return {"block": self.block, "offset": self.offset}

    def restore(self, state: dict[str, int]) -> None:
        """Continue from `state()` of an earlier stream over the same model and data."""
        self.block, self.offset = int(state["block"]), int(state["offset"])
        self._rows = None

    def _compute_block(self) -> torch.Tensor:
        first = self.block * self.windows_per_block
        parts = []
        for j in range(self.buffer_batches):
            idx = self.windows.batch(first + j * self.model_batch, self.model_batch)
            parts.append(activations(self.model, self.hook, idx.to(self.device)).float())
        rows = torch.cat(parts)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.block)
        return rows[torch.randperm(rows.shape[0], generator=g).to(rows.device)]

    def peek(self, n: int) -> torch.Tensor:
        """Up to n rows the stream gives next (from the current block), without taking them."""
        if self._rows is None:
            self._rows = self._compute_block()
        return self._rows[self.offset : self.offset + n]

    def next_batch(self) -> torch.Tensor:
        """The next `batch_size` rows (batch_size, width), float32, on the model's device."""
        pieces, need = [], self.batch_size
        while need:
            if self._rows is None:
                self._rows = self._compute_block()
            take = min(need, self._rows.shape[0] - self.offset)
            pieces.append(self._rows[self.offset : self.offset + take])
            self.offset += take
            need -= take
            if self.offset == self._rows.shape[0]:
                self.block, self.offset, self._rows = self.block + 1, 0, None
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)
