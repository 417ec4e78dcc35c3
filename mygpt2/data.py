"""Token files to batches: `BlockPairDataset` and the train/val loaders.

`BlockPairDataset` keeps the original myGPT2 semantics: block starts every `T` tokens
(`range(0, len(tokens) - 1, T)`), item `i` reads the `T + 1` tokens at
`starts[i % len(starts)]` (so a training run longer than the corpus repeats it), and
returns `(x, y)` with `y` shifted by one. The last block is usually short: its inputs are
padded with the newline token as in the original, and -- the one change -- its padded
*targets* are -100, the `ignore_index` of `F.cross_entropy`, so padding adds nothing to the
loss. With `shuffle`, each pass over the starts follows its own seeded permutation, so
repetition still visits every block once per pass.

Loaders (build-nanogpt style, no worker processes: slicing a memmap is cheap):
- A *macro batch* is `macro_batch_size` items, consumed by one optimizer step over all
  processes. Training item `k * macro_batch_size + j` belongs to step `k`; under DDP rank `r`
  takes the `r`-th contiguous slice of every macro batch, in micro-batches of `batch_size`.
  So the ranks' shards are disjoint and together are exactly the single-process batches.
- Batch arithmetic lives here alone: `accum_steps` checks that `macro_batch_size` divides into
  micro-batches of `batch_size` on every process, and the training loop asks the loader
  (`TrainLoader.accum`) how many micro-batches make one step.
- Short blocks are padded with the id recorded in the prepared files' meta.json
  (`padding_id`), so training pads with what preparation wrote down, not a second guess.
- Training length is `max_steps` macro batches, or with `single_pass` one epoch: every
  complete macro batch of blocks once (fewer than `macro_batch_size` leftover blocks are
  dropped). `TrainLoader.steps` is the number of macro steps it provides.
- `TrainLoader.state_dict()` is its position (micro-batches consumed); loading it makes the
  loader yield exactly the batches an uninterrupted run would have seen next.
- Validation reads blocks in order; every evaluation restarts at the first batch, so the
  losses of successive evaluations are comparable. Rank `r` takes batches `r, r + W, ...`.
- Batches are in pinned memory when CUDA is available; `to_device` copies non-blocking.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mygpt2.config import Config
from mygpt2.errors import MyGPT2Error
from mygpt2.loss import IGNORE_INDEX
from mygpt2.prepare import newline_id


class BlockPairDataset(Dataset):
    """(x, y) pairs of T tokens from blocks starting every T tokens, original semantics."""

    def __init__(
        self,
        tokens: np.ndarray,
        T: int,
        length: int | None = None,
        pad_id: int = 198,  # GPT-2's newline; pass your tokenizer's (meta.json: newline_id)
        shuffle: bool = False,
        seed: int = 0,
    ) -> None:
        if len(tokens) < 2:
            raise MyGPT2Error(f"{len(tokens)} tokens cannot make one (x, y) pair; need 2 or more.")
        if isinstance(T, bool) or not isinstance(T, numbers.Integral) or T < 1:
            raise MyGPT2Error(f"T (the block length) must be a whole number from 1, got {T!r}.")
        self.tokens, self.T, self.pad_id = tokens, T, pad_id
        self.starts = range(0, len(tokens) - 1, T)
        self.length = len(self.starts) if length is None else length
        self.shuffle, self.seed = shuffle, seed
        self._order: tuple[int, np.ndarray] | None = None  # (pass, permutation) cache

    def __len__(self) -> int:
        return self.length

    def start(self, i: int) -> int:
        """Token offset of item i: starts[i % n], or its place in pass i // n's permutation."""
        n = len(self.starts)
        if not self.shuffle:
            return self.starts[i % n]
        epoch = i // n
        if self._order is None or self._order[0] != epoch:
            # One generator per (seed, pass): any item's block is computable on its own,
            # which is what makes sharding and resuming exact.
            self._order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(n))
        return self.starts[int(self._order[1][i % n])]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < self.length:
            raise IndexError(f"item {i} outside 0..{self.length - 1}")
        s = self.start(i)
        block = torch.from_numpy(self.tokens[s : s + self.T + 1].astype(np.int64))
        x, y = block[:-1], block[1:]
        if len(x) < self.T:  # the short last block
            pad = self.T - len(x)
            x = torch.cat([x, torch.full((pad,), self.pad_id, dtype=torch.int64)])
            y = torch.cat([y, torch.full((pad,), IGNORE_INDEX, dtype=torch.int64)])
        return x, y

    def batch(self, indices: range | list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Items `indices` stacked, (len, T) each: what stacking `self[i]` gives, read from the
        tokens in one gather when every block is whole (0.03 ms for the speedrun's 32 x 64,
        where reading and stacking item by item took 0.25 ms of a 40 ms step)."""
        if any(not 0 <= i < self.length for i in indices):
            return _stack([self[i] for i in indices])  # which raises IndexError, as self[i]
        starts = np.fromiter((self.start(i) for i in indices), dtype=np.int64)
        if not len(starts) or starts.max() + self.T + 1 > len(self.tokens):  # short last block
            return _stack([self[i] for i in indices])
        blocks = torch.from_numpy(
            self.tokens[starts[:, None] + np.arange(self.T + 1)].astype(np.int64)
        )
        return blocks[:, :-1].contiguous(), blocks[:, 1:].contiguous()


def _stack(items: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])


def _pinned(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if torch.cuda.is_available():  # pinned host memory makes the copy to the GPU async
        x, y = x.pin_memory(), y.pin_memory()
    return x, y


def to_device(
    batch: tuple[torch.Tensor, torch.Tensor], device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Move (x, y) to the device, non-blocking from pinned memory."""
    x, y = batch
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def accum_steps(batch_size: int, macro_batch_size: int, world_size: int = 1) -> int:
    """Micro-batches per optimizer step on each process; an error if the sizes do not divide.

    >>> accum_steps(4, 32, 2)
    4
    """
    per_pass = batch_size * world_size
    if macro_batch_size % per_pass:
        suggestion = max(per_pass, macro_batch_size // per_pass * per_pass)
        raise MyGPT2Error(
            f"macro_batch_size ({macro_batch_size}) must be a multiple of batch_size "
            f"({batch_size}) x processes ({world_size}) = {per_pass}. For example use "
            f"--macro_batch_size {suggestion}."
        )
    return macro_batch_size // per_pass


def padding_id(meta: dict[str, Any], tok: Any) -> int:
    """The id that pads the short last block: `newline_id` from the prepared files' meta.json.

    Files prepared before meta.json recorded it fall back to the tokenizer's newline, so old
    token files keep loading (and pad as they did)."""
    if "newline_id" in meta:
        return int(meta["newline_id"])
    return newline_id(tok)


class TrainLoader:
    """Micro-batches of this rank's share of each macro batch; resumable by position."""

    def __init__(
        self,
        dataset: BlockPairDataset,
        batch_size: int,
        macro_batch_size: int,
        steps: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.accum = accum_steps(batch_size, macro_batch_size, world_size)
        self.dataset, self.batch_size, self.macro = dataset, batch_size, macro_batch_size
        self.rank, self.world_size, self.steps = rank, world_size, steps
        self.per_rank = self.accum * batch_size  # sequences per step on each rank
        self.position = 0  # micro-batches consumed

    def __len__(self) -> int:
        return self.steps * self.accum

    def indices(self, position: int) -> range:
        """Dataset items of this rank's micro-batch number `position`."""
        step, micro = divmod(position, self.accum)
        first = step * self.macro + self.rank * self.per_rank + micro * self.batch_size
        return range(first, first + self.batch_size)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next micro-batch (x, y), each (batch_size, T) int64."""
        if self.position >= len(self):
            raise StopIteration
        batch = _pinned(*self.dataset.batch(self.indices(self.position)))
        self.position += 1
        return batch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # Continues from the current position, so iterating after load_state_dict resumes.
        while self.position < len(self):
            yield self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        """Position plus the layout it is counted in."""
        return {
            "position": self.position,
            "batch_size": self.batch_size,
            "macro_batch_size": self.macro,
            "world_size": self.world_size,
            "seed": self.dataset.seed,
            "shuffle": self.dataset.shuffle,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at a saved position (also across a new batch_size/world_size at a step edge)."""
        position = int(state["position"])
        if (
            state.get("seed", self.dataset.seed) != self.dataset.seed
            or state.get("shuffle", self.dataset.shuffle) != self.dataset.shuffle
        ):
            raise MyGPT2Error(
                "cannot resume the data order: the checkpoint used seed "
                f"{state.get('seed')} and shuffle {state.get('shuffle')}, this run "
                f"{self.dataset.seed} and {self.dataset.shuffle}. Use the same values."
            )
        same_layout = (
            state.get("batch_size", self.batch_size) == self.batch_size
            and state.get("world_size", self.world_size) == self.world_size
        )
        if not same_layout:
            old_accum = state["macro_batch_size"] // (state["world_size"] * state["batch_size"])
            step, micro = divmod(position, old_accum)
            if micro or state["macro_batch_size"] != self.macro:
                raise MyGPT2Error(
                    "cannot resume the data position: batch_size or the number of processes "
                    "changed in the middle of a step (or macro_batch_size changed)."
                )
            position = step * self.accum  # the same items, counted in the new layout
        self.position = position


class ValLoader:
    """Up to `eval_batches` batches of this rank's validation shard, from the start each time."""

    def __init__(
        self,
        dataset: BlockPairDataset,
        batch_size: int,
        eval_batches: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.dataset, self.batch_size = dataset, batch_size
        self.rank, self.world_size = rank, world_size
        self.total_batches = -(-len(dataset) // batch_size)  # the last one may be short
        # Every rank runs the same number of batches (DDP's forward may talk to the other
        # ranks); a tiny val split gives some ranks a repeated batch rather than none.
        self.num_batches = min(eval_batches, max(1, self.total_batches // world_size))

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for k in range(self.num_batches):
            b = (self.rank + k * self.world_size) % self.total_batches
            stop = min((b + 1) * self.batch_size, len(self.dataset))
            yield _pinned(*self.dataset.batch(range(b * self.batch_size, stop)))


def check_block_sizes(n_train: int, n_val: int, T: int) -> None:
    """Each split must hold at least one full block of T + 1 tokens (input and shifted target)."""
    need = T + 1
    for name, n, fix in (
        ("train", n_train, "Raise split or use a bigger corpus"),
        ("val", n_val, "Lower split or use a bigger corpus"),
    ):
        if n < need:
            raise MyGPT2Error(
                f"the {name} split has {n} tokens, fewer than one block of T + 1 = {need}. "
                f"{fix}, or a smaller --T."
            )


def construct_data_loaders(
    cfg: Config,
    train_tokens: np.ndarray,
    val_tokens: np.ndarray,
    pad_id: int,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[TrainLoader, ValLoader]:
    """Train and val loaders for this rank, sized by max_steps (or one epoch with single_pass)."""
    t, T = cfg.train, cfg.model.T
    check_block_sizes(len(train_tokens), len(val_tokens), T)
    train_set = BlockPairDataset(
        train_tokens, T, pad_id=pad_id, shuffle=t.shuffle, seed=cfg.run.seed
    )
    blocks = len(train_set.starts)
    if cfg.train.single_pass:
        steps = blocks // t.macro_batch_size
        if steps == 0:
            raise MyGPT2Error(
                f"single_pass: the train split has {blocks} blocks of T = {T}, fewer than one "
                f"macro batch of {t.macro_batch_size}. Lower macro_batch_size or use more data."
            )
    else:
        steps = t.max_steps
    train_set.length = steps * t.macro_batch_size
    val_set = BlockPairDataset(val_tokens, T, pad_id=pad_id)
    train = TrainLoader(train_set, t.batch_size, t.macro_batch_size, steps, rank, world_size)
    val = ValLoader(val_set, t.val_batch_size or t.batch_size, t.eval_batches, rank, world_size)
    return train, val


Construct_data_loaders = construct_data_loaders  # the original myGPT2 name
