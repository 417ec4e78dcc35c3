"""Multiple-choice benchmarks from local JSONL files (HellaSwag's format, or a generic one).

    task = read_task("hellaswag_val.jsonl")
    score = score_task(model, tok, task)
    score.acc, score.acc_norm, score.acc_per_token, score.n

Formats, one JSON object a line (blank lines skipped):
- HellaSwag, as in its released files: `ctx` (or `ctx_a` and `ctx_b`, joined with a space),
  `endings` (a list of strings), `label` (the right ending's index; an int or a digit string).
- Generic: `context`, `choices`, `answer` (the right choice's index).

Scoring is completion style, as nanoGPT's and llm.c's HellaSwag scripts do it: the context's
tokens, then the tokens of `" " + ending` (encoded on its own), and the log-probability of each
ending token given everything before it. Three ways to pick an ending from those sums:

- `acc`: the highest sum;
- `acc_norm`: the highest sum divided by the ending's length in characters, `len(ending)`
  without the space in front: lm-evaluation-harness's `acc_norm` (its `completion_len` is
  the length of the choice string, and the delimiter is added to the request, not to it);
- `acc_per_token`: the highest mean per ending token (the space's token included, as the
  ending is encoded): what llm.c's and build-nanogpt's HellaSwag scripts call `acc_norm`.

One name for each: the same name meaning two things made figures look comparable that were
not. Ties go to the first ending, as `numpy.argmax` breaks them in lm-evaluation-harness. The
95% intervals are Wilson score intervals, which stay inside [0, 1] for small counts.

A context whose tokens and an ending's do not fit `T + 1` (the model sees `T` inputs) loses
tokens from its left; `TaskScore.truncated` counts the items this happened to. An ending longer
than `T` tokens cannot be scored and is refused. An empty context is the end-of-text token.

Rows (one per item and ending) are sorted by length and packed into forward passes of about
`batch_size * T` tokens; right padding does not change the causal model's scores.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mygpt2.errors import MyGPT2Error
from mygpt2.evaluation.text import row_nll
from mygpt2.model import GPT
from mygpt2.tokenizer import RegexTokenizer


@dataclass
class Item:
    """One question: a context, its possible endings, the index of the right one."""

    context: str
    endings: list[str]
    label: int
    line: int  # in the file, from 1


@dataclass
class Task:
    """A multiple-choice file, read and checked."""

    name: str
    path: Path
    items: list[Item]


def _label(value: Any, key: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise MyGPT2Error(f"{where}: '{key}' must be an integer index, got {value!r}.")
    if isinstance(value, str):
        if not value.strip().isdigit():
            raise MyGPT2Error(f"{where}: '{key}' must be an integer index, got {value!r}.")
        return int(value)
    return value


def _string(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj[key]
    if not isinstance(value, str):
        raise MyGPT2Error(f"{where}: '{key}' must be a string, got {type(value).__name__}.")
    return value


def parse_item(obj: Any, where: str, line: int) -> Item:
    """An Item from one decoded JSONL line (HellaSwag or generic format), or a clear error."""
    if not isinstance(obj, dict):
        raise MyGPT2Error(f"{where}: expected a JSON object, got {type(obj).__name__}.")
    if "endings" in obj:  # HellaSwag
        if "ctx" in obj:
            context = _string(obj, "ctx", where)
        elif "ctx_a" in obj:
            a = _string(obj, "ctx_a", where)
            b = _string(obj, "ctx_b", where) if "ctx_b" in obj else ""
            context = f"{a} {b}" if b else a
        else:
            raise MyGPT2Error(f"{where}: a HellaSwag line needs 'ctx' (or 'ctx_a' and 'ctx_b').")
        keys = ("endings", "label")
    elif "choices" in obj or "context" in obj:
        if "context" not in obj:
            raise MyGPT2Error(
                f"{where}: missing 'context' (generic lines have context, choices, answer)."
            )
        context = _string(obj, "context", where)
        keys = ("choices", "answer")
    else:
        raise MyGPT2Error(
            f"{where}: neither HellaSwag's keys (ctx, endings, label) nor the generic ones "
            f"(context, choices, answer); it has {', '.join(map(repr, obj)) or 'none'}."
        )
    ends_key, label_key = keys
    if label_key not in obj:
        hint = (
            " (HellaSwag's test file has no labels: use hellaswag_val.jsonl)"
            if label_key == "label"
            else ""
        )
        raise MyGPT2Error(f"{where}: missing '{label_key}'{hint}.")
    if ends_key not in obj:
        raise MyGPT2Error(f"{where}: missing '{ends_key}'.")
    endings = obj[ends_key]
    if not isinstance(endings, list) or len(endings) < 2:
        raise MyGPT2Error(f"{where}: '{ends_key}' must be a list of at least 2 strings.")
    for j, ending in enumerate(endings):
        if not isinstance(ending, str):
            raise MyGPT2Error(f"{where}: {ends_key}[{j}] must be a string, got {ending!r}.")
        if not ending.strip():
            raise MyGPT2Error(f"{where}: {ends_key}[{j}] is empty: there is nothing to score.")
    label = _label(obj[label_key], label_key, where)
    if not 0 <= label < len(endings):
        raise MyGPT2Error(
            f"{where}: '{label_key}' is {label}, out of range for {len(endings)} "
            f"{ends_key} (0..{len(endings) - 1})."
        )
    return Item(context, endings, label, line)


def read_task(path: str | Path, max_items: int = 0) -> Task:
    """Read and check a JSONL file of items (the first `max_items` of them; 0: all)."""
    path = Path(path)
    if not path.is_file():
        raise MyGPT2Error(f"task file '{path}' does not exist.")
    items = []
    try:
        with open(path, encoding="utf-8") as fh:
            for n, text in enumerate(fh, start=1):
                if not text.strip():
                    continue
                where = f"{path}:{n}"
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as e:
                    raise MyGPT2Error(
                        f"{where}: not valid JSON ({e.msg}, column {e.colno})."
                    ) from None
                items.append(parse_item(obj, where, n))
                if max_items and len(items) >= max_items:
                    break
    except UnicodeDecodeError:
        raise MyGPT2Error(f"task file '{path}' is not UTF-8 text.") from None
    except OSError as e:
        raise MyGPT2Error(f"could not read task file '{path}': {e.strerror}.") from None
    if not items:
        raise MyGPT2Error(f"task file '{path}' holds no items.")
    return Task(path.stem, path, items)


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of k successes in n trials (95% for z = 1.96)."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass
class TaskScore:
    """What `score_task` found: counts, and per item the scores behind each prediction."""

    name: str
    n: int
    correct: int
    correct_norm: int  # per character (lm-evaluation-harness)
    correct_per_token: int  # per token (llm.c)
    truncated: int  # items whose context lost tokens on the left to fit T
    seconds: float
    predictions: list[dict[str, Any]] = field(default_factory=list, repr=False)

    @property
    def acc(self) -> float:
        return self.correct / self.n

    @property
    def acc_norm(self) -> float:
        """Right answers picked per character of the ending, as lm-evaluation-harness."""
        return self.correct_norm / self.n

    @property
    def acc_per_token(self) -> float:
        """Right answers picked per token of the ending, as llm.c's HellaSwag."""
        return self.correct_per_token / self.n

    def as_dict(self) -> dict[str, Any]:
        """The figures as plain JSON values (predictions left out)."""
        return {
            "acc": self.acc,
            "acc_norm": self.acc_norm,
            "acc_per_token": self.acc_per_token,
            "n": self.n,
            "acc_interval": list(wilson_interval(self.correct, self.n)),
            "acc_norm_interval": list(wilson_interval(self.correct_norm, self.n)),
            "acc_per_token_interval": list(wilson_interval(self.correct_per_token, self.n)),
            "truncated": self.truncated,
            "seconds": self.seconds,
        }


def _rows(task: Task, tok: RegexTokenizer, T: int) -> tuple[list[tuple[list[int], int]], set[int]]:
    """Per item and ending: (tokens, how many trailing tokens are the ending); truncated items."""
    contexts = tok.encode_ordinary_batch([item.context for item in task.items])
    flat = [" " + e for item in task.items for e in item.endings]
    endings = iter(tok.encode_ordinary_batch(flat))
    rows, truncated = [], set()
    for i, (item, ctx) in enumerate(zip(task.items, contexts, strict=True)):
        ctx = ctx or [tok.eot_id]
        for j in range(len(item.endings)):
            end = next(endings)
            if len(end) > T:
                raise MyGPT2Error(
                    f"{task.path}:{item.line}: ending {j} is {len(end)} tokens, more than the "
                    f"model's context length T={T}: it cannot be scored."
                )
            full = ctx + end
            if len(full) > T + 1:
                full = full[len(full) - (T + 1) :]
                truncated.add(i)
            rows.append((full, len(end)))
    return rows, truncated


def score_task(
    model: GPT,
    tok: RegexTokenizer,
    task: Task,
    *,
    batch_size: int = 8,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> TaskScore:
    """Score every ending of every item (completion style) and count right answers."""
    from tqdm import tqdm

    T = model.config.T
    start = time.perf_counter()
    rows, truncated = _rows(task, tok, T)
    device = next(model.parameters()).device
    order = sorted(range(len(rows)), key=lambda r: -len(rows[r][0]))
    nll = [0.0] * len(rows)
    budget = max(1, batch_size) * T  # tokens per forward pass
    was_training = model.training
    model.eval()
    bar = tqdm(
        total=len(rows), unit="ending", desc=task.name, disable=not progress, file=sys.stderr
    )
    try:
        with torch.inference_mode(), bar:
            b = 0
            while b < len(order):
                width = len(rows[order[b]][0]) - 1  # the longest row of the batch comes first
                group = order[b : b + max(1, budget // width)]
                idx = torch.zeros(len(group), width, dtype=torch.long)
                targets = torch.zeros(len(group), width, dtype=torch.long)
                scored = torch.zeros(len(group), width, dtype=torch.bool)
                for k, r in enumerate(group):
                    full, n_end = rows[r]
                    t = len(full) - 1
                    idx[k, :t] = torch.tensor(full[:-1])
                    targets[k, :t] = torch.tensor(full[1:])
                    scored[k, t - n_end : t] = True
                sums = row_nll(model, idx.to(device), targets.to(device), scored.to(device), dtype)
                for r, value in zip(group, sums.tolist(), strict=True):
                    nll[r] = value
                bar.update(len(group))
                b += len(group)
    finally:
        model.train(was_training)
    return _count(task, rows, nll, truncated, time.perf_counter() - start)


def _count(
    task: Task,
    rows: list[tuple[list[int], int]],
    nll: list[float],
    truncated: set[int],
    seconds: float,
) -> TaskScore:
    correct = correct_norm = correct_per_token = 0
    predictions, r = [], 0
    for i, item in enumerate(task.items):
        k = len(item.endings)
        sums = [-nll[r + j] for j in range(k)]
        tokens = [rows[r + j][1] for j in range(k)]
        chars = [len(ending) for ending in item.endings]  # parse_item refuses empty endings
        per_char = [s / n for s, n in zip(sums, chars, strict=True)]
        per_token = [s / n for s, n in zip(sums, tokens, strict=True)]
        r += k
        pred, pred_norm, pred_per_token = (first_best(v) for v in (sums, per_char, per_token))
        correct += pred == item.label
        correct_norm += pred_norm == item.label
        correct_per_token += pred_per_token == item.label
        predictions.append(
            {
                "task": task.name,
                "line": item.line,
                "label": item.label,
                "pred": pred,
                "pred_norm": pred_norm,
                "pred_per_token": pred_per_token,
                "logprob_sum": sums,
                "logprob_per_char": per_char,
                "logprob_per_token": per_token,
                "ending_chars": chars,
                "ending_tokens": tokens,
                "truncated": i in truncated,
            }
        )
    n = len(task.items)
    return TaskScore(
        task.name, n, correct, correct_norm, correct_per_token, len(truncated), seconds, predictions
    )


def first_best(scores: list[float]) -> int:
    """The index of the highest score; the first of equal ones (as `numpy.argmax`)."""
    return max(range(len(scores)), key=lambda j: (scores[j], -j))
