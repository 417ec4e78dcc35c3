"""What a training run measures at each evaluation besides its validation loss.

- `val_bpb`: the validation loss in bits per UTF-8 byte, so that runs with different
  tokenizers (a 512-token vocabulary and GPT-2's 50,257 give incomparable losses per token)
  compare on one axis. The validation batches are the same at every evaluation, so their
  targets are counted once: val_bpb = val_loss x targets / ln 2 / bytes of those targets.
  End-of-text targets are predicted (their nats count) but are no text (no bytes), as in the
  per-token loss the run reports; padding targets count in neither.
- `eval_data` (any `--data` source) scored by sliding window (`mygpt2.evaluation`), exactly as
  `mygpt2 eval --data` scores it, but only its first tokens: as many as one validation pass
  holds (eval_batches x validation batch x T), so an evaluation costs about twice as much.
- `eval_tasks` (multiple-choice JSONL files, `mygpt2.evaluation.tasks`): accuracy on the first items,
  as many as there are sequences in one validation pass.

Both extra sources are read once, when the run is set up, so a bad file fails before any
training step. They are scored on rank 0 only, on the raw (not compiled, not DDP) model.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

from mygpt2.config import Config
from mygpt2.corpus import open_corpus
from mygpt2.evaluation.tasks import Task, read_task, score_task
from mygpt2.evaluation.text import TextStream, read_stream, score_stream, token_byte_lengths
from mygpt2.loss import IGNORE_INDEX
from mygpt2.model import GPT
from mygpt2.runtime import all_reduce
from mygpt2.tokenizer import RegexTokenizer

CPU = torch.device("cpu")


@dataclass
class RunEvals:
    """The extra evaluations of one run, with what they need read in advance."""

    tokenizer: RegexTokenizer
    token_bytes: torch.Tensor  # UTF-8 bytes of each token id; 0 for special tokens
    batch_size: int  # windows (eval_data) and rows of T tokens (tasks) per forward pass
    stream: TextStream | None = None  # eval_data, cut to the budget
    stride: int = 0
    tasks: list[Task] = dataclasses.field(default_factory=list)
    val_counts: tuple[int, int] | None = None  # (targets, bytes) of the validation batches
    device: torch.device = CPU  # the run's: where counts are summed over ranks


def prepare_evals(
    cfg: Config,
    tok: RegexTokenizer,
    *,
    read_sources: bool = True,
    device: torch.device = CPU,
) -> RunEvals:
    """Read `eval_data` and `eval_tasks` (when `read_sources`, i.e. on rank 0) within their
    budget; a missing or malformed source fails here, before training starts. `device` is
    the run's (collectives take tensors there)."""
    t = cfg.train
    batch = t.val_batch_size or t.batch_size
    evals = RunEvals(
        tokenizer=tok,
        token_bytes=torch.from_numpy(token_byte_lengths(tok)),
        batch_size=batch,
        stride=t.eval_stride or cfg.model.T,
        device=device,
    )
    if not read_sources:
        return evals
    sequences = t.eval_batches * batch  # one validation pass
    if t.eval_data:
        source = dataclasses.replace(cfg.data, data=t.eval_data)
        evals.stream = read_stream(open_corpus(source), tok, max_tokens=sequences * cfg.model.T)
    paths = [p.strip() for p in t.eval_tasks.split(",") if p.strip()]
    evals.tasks = [read_task(p, max_items=sequences) for p in paths]
    return evals


def validation_bpb(
    evals: RunEvals, val_batches: Any, val_loss: float, *, distributed: bool = False
) -> float:
    """The validation loss in bits per byte (see the module's docstring). Under DDP every
    rank calls it (the counts are summed over ranks once)."""
    if evals.val_counts is None:
        targets = nbytes = 0
        for _, y in val_batches:
            valid = y[y != IGNORE_INDEX]
            targets += valid.numel()
            nbytes += int(evals.token_bytes[valid].sum())
        if distributed:  # on the run's device: NCCL sums no CPU tensor
            counts = torch.tensor([targets, nbytes], dtype=torch.int64, device=evals.device)
            targets, nbytes = all_reduce(counts, evals.device).tolist()
        evals.val_counts = (targets, nbytes)
    targets, nbytes = evals.val_counts
    return val_loss * targets / math.log(2) / nbytes if nbytes else math.nan


def score_extras(evals: RunEvals, model: GPT, dtype: torch.dtype) -> dict[str, Any]:
    """Score `eval_data` and the tasks; the figures as flat metrics-row fields."""
    row: dict[str, Any] = {}
    if evals.stream is not None:
        score = score_stream(
            model, evals.stream, stride=evals.stride, batch_size=evals.batch_size, dtype=dtype
        )
        row |= {
            "eval_data_loss": score.loss,
            "eval_data_bpb": score.bits_per_byte,
            "eval_data_tokens": score.tokens,
        }
    for task in evals.tasks:
        result = score_task(model, evals.tokenizer, task, batch_size=evals.batch_size, dtype=dtype)
        row |= {
            f"acc/{task.name}": result.acc,
            f"acc_norm/{task.name}": result.acc_norm,  # per character, as lm-eval's
            f"acc_per_token/{task.name}": result.acc_per_token,  # as llm.c's HellaSwag
            f"n/{task.name}": result.n,
        }
    return row
