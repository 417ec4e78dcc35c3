"""Language-modelling metrics on any text: loss, perplexity, bits per byte, tokens per byte.

    stream = read_stream(open_corpus(cfg.data), tok)         # or text_stream("some text", tok)
    score = score_stream(model, stream, stride=model.config.T // 2, batch_size=8)
    score.loss, score.perplexity, score.bits_per_byte          # nats/token, e^loss, bits/byte

Definitions (docs/EVAL.md has the worked arithmetic):
- The stream is the text's documents joined as training joins them: `<|endoftext|>` before
  each document, so the first token of the text is predicted from the end-of-text token, as
  the first token of a document is in training. The end-of-text tokens are context only,
  never scored: the scored tokens are exactly the text's tokens.
- Windows of `T` tokens slide over the stream by `stride`: the first window scores all of its
  predictions, each later one only its last `stride` (the last window: what is left), so
  every token is scored exactly once, predicted from at least `T - stride + 1` tokens (all
  that precede it while it lies in the first window). `stride = T`: disjoint blocks, as
  training's validation loss. Windows cross document boundaries, as training's blocks do.
- loss = total nats / scored tokens; perplexity = e^loss; bits per byte = total nats / ln 2 /
  the UTF-8 bytes of the scored text (comparable across tokenizers); tokens per byte =
  scored tokens / bytes. Bytes are counted from the scored tokens' own bytes, which for a
  byte-level BPE are exactly the text's UTF-8 bytes (also when `max_tokens` cuts the text).

Design choices:
- The model's own trunk (`GPT.hidden`) runs the network up to its final norm, and its own
  head (`GPT.head`, softcap included) is applied to the scored positions only, in chunks of rows, each turned into log-probabilities while it
  is at hand: nothing of size (tokens, vocab) is ever kept, and with `stride < T` the head
  does `stride / T` of the work `GPT.forward` would (benchmarks/bench_eval.py).
- The log-softmax is over the tokenizer's vocabulary only: a `pad_vocab` model's padding ids
  are left out, as generation leaves them out.
- Totals are summed in float64; under bf16/fp16 autocast the logits are taken in float32.
- The functions take a model already on its device and put it back in the mode they found it
  in, so the training loop can call `score_stream` on its raw model between steps.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from mygpt2.corpus import Corpus
from mygpt2.errors import MyGPT2Error
from mygpt2.loss import IGNORE_INDEX
from mygpt2.model import GPT
from mygpt2.runtime import autocast
from mygpt2.tokenizer import RegexTokenizer

LN2 = math.log(2.0)
DOCS_PER_BATCH_CHARS = 1 << 22  # documents are encoded in batches of about this many chars


# ----------------------------------------------------------------------------- windows


class Window(NamedTuple):
    """Inputs `stream[start:end]`, targets `stream[start + 1:end + 1]`; the last `scored`
    targets are scored here."""

    start: int
    end: int
    scored: int


def check_stride(stride: int, T: int) -> None:
    """Refuse a stride that would skip tokens (> T) or never move (<= 0)."""
    if not 1 <= stride <= T:
        raise MyGPT2Error(
            f"stride must be between 1 and the context length T={T}, got {stride}: each window "
            f"scores its last `stride` tokens (stride = T: disjoint blocks; T/2 = {T // 2} gives "
            "every token at least half a context)."
        )


def sliding_windows(predictions: int, T: int, stride: int) -> list[Window]:
    """Windows of at most `T` inputs over a stream of `predictions + 1` tokens that score each
    of the `predictions` targets once: [Window(0, 4, 4), Window(2, 6, 2), Window(3, 7, 1)] for
    7 predictions, T = 4, stride = 2."""
    check_stride(stride, T)
    if predictions <= 0:
        return []
    end = min(T, predictions)
    out = [Window(0, end, end)]
    while end < predictions:
        new_end = min(end + stride, predictions)
        out.append(Window(new_end - T, new_end, new_end - end))
        end = new_end
    return out


# ----------------------------------------------------------------------------- scoring


def token_nll(model: GPT, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-log p(target) for each row of `hidden` (N, n_emb), the model's final hidden states,
    through the model's own head (`GPT.head`: softcap included) over the real vocabulary, a
    chunk of rows at a time; float32 (float64 for a float64 model)."""
    rows = max(64, 2**25 // model.padded_vocab_size)  # a chunk's logits: at most 128 MB
    out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    if hidden.dtype == torch.float64:
        out = out.double()
    for s in range(0, hidden.shape[0], rows):
        logits = model.head(hidden[s : s + rows])  # (rows, vocab), autocast dtype if any
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        picked = logits.gather(1, targets[s : s + rows, None]).squeeze(1)
        # log-sum-exp in place: one exp pass over the chunk and no second (rows, vocab) tensor
        top = logits.amax(dim=-1, keepdim=True)
        sum_exp = logits.sub_(top).exp_().sum(dim=-1)
        out[s : s + rows] = sum_exp.log_() + top.squeeze(1) - picked
    return out


def row_nll(
    model: GPT,
    idx: torch.Tensor,
    targets: torch.Tensor,
    scored: torch.Tensor,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Summed nats of the `scored` (B, t) targets of each row of `idx` (B, t): (B,) float64."""
    device = idx.device
    with autocast(device, dtype):
        if idx.shape[1] > model.config.T:
            raise MyGPT2Error(
                f"{idx.shape[1]} tokens do not fit the context length {model.config.T}."
            )
        hidden = model.hidden(idx)[scored]  # (N, n_emb), row-major order
        nll = token_nll(model, hidden, targets[scored])
    row = scored.nonzero()[:, 0]
    sums = torch.zeros(idx.shape[0], dtype=torch.float64, device=device)
    return sums.index_add_(0, row, nll.double())


def batches_nll(
    model: GPT, batches: Any, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed nats (float64) and count (int64) of the valid targets (not -100) of `batches` of
    (x, y) on the model's device: the one validation loss of training, `inspect series` and
    the run-time evaluations (the mean is nats / count, also summed over processes)."""
    device = next(model.parameters()).device
    nats = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.int64, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for x, y in batches:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                scored = y != IGNORE_INDEX
                nats += row_nll(model, x, y.clamp(min=0), scored, dtype).sum()
                count += scored.sum()
    finally:
        model.train(was_training)
    return nats, count


# ----------------------------------------------------------------------------- text


@dataclass
class TextStream:
    """The token stream of a text: `<|endoftext|>` before each document (int64 ids)."""

    tokens: np.ndarray
    eot_id: int
    text_tokens: int  # tokens that are text (scored); the rest are end-of-text separators
    bytes: int  # UTF-8 bytes of those text tokens
    documents: int
    truncated: bool = False  # max_tokens cut the text short


def token_byte_lengths(tok: RegexTokenizer) -> np.ndarray:
    """Bytes of each token id (0 for an end-of-text token, which is never scored)."""
    lengths = np.zeros(tok.vocab_size, dtype=np.int64)
    for b, i in tok.ranks.items():
        lengths[i] = len(b)
    return lengths


def _stream(
    docs: list[list[int]], tok: RegexTokenizer, max_tokens: int, truncated: bool
) -> TextStream:
    eot, pieces, count = tok.eot_id, [], 0
    for ids in docs:
        pieces += [np.array([eot], dtype=np.int64), np.asarray(ids, dtype=np.int64)]
        count += len(ids)
    tokens = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
    if max_tokens and count > max_tokens:
        # cut after the max_tokens-th text token
        text_positions = np.flatnonzero(tokens != eot)
        tokens, count, truncated = tokens[: text_positions[max_tokens - 1] + 1], max_tokens, True
    n_bytes = int(token_byte_lengths(tok)[tokens[tokens != eot]].sum())
    return TextStream(tokens, eot, count, n_bytes, len(docs), truncated)


def text_stream(texts: str | list[str], tok: RegexTokenizer, max_tokens: int = 0) -> TextStream:
    """The stream of one text or a list of documents (in memory)."""
    docs = [texts] if isinstance(texts, str) else list(texts)
    return _stream(tok.encode_ordinary_batch([d for d in docs if d]), tok, max_tokens, False)


def read_stream(corpus: Corpus, tok: RegexTokenizer, max_tokens: int = 0) -> TextStream:
    """The stream of a corpus (`mygpt2.corpus.open_corpus`), empty documents left out, read
    only as far as `max_tokens` text tokens (0: all) need."""
    docs: list[list[int]] = []
    batch: list[str] = []
    size = count = 0
    truncated = False

    def flush() -> None:
        nonlocal count, batch, size
        encoded = tok.encode_ordinary_batch(batch) if batch else []
        docs.extend(encoded)
        count += sum(len(ids) for ids in encoded)
        batch, size = [], 0

    for document in corpus.documents():
        if max_tokens and count >= max_tokens:
            truncated = True
            break
        text = "".join(document)
        if text:
            batch.append(text)
            size += len(text)
        if size >= DOCS_PER_BATCH_CHARS or (max_tokens and size >= max_tokens):
            flush()
    flush()
    stream = _stream(docs, tok, max_tokens, truncated)
    if stream.text_tokens == 0:
        raise MyGPT2Error(f"{corpus.description} holds no text to score (it is empty).")
    return stream


@dataclass
class TextScore:
    """What `score_stream` measured, and the metrics that follow from it."""

    nats: float  # summed -log p over the scored tokens
    tokens: int
    bytes: int
    windows: int
    T: int
    stride: int
    seconds: float

    @property
    def loss(self) -> float:
        """Mean nats per token."""
        return self.nats / self.tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss) if self.loss < 700 else math.inf

    @property
    def bits_per_byte(self) -> float:
        return self.nats / LN2 / self.bytes if self.bytes else math.nan

    @property
    def tokens_per_byte(self) -> float:
        return self.tokens / self.bytes if self.bytes else math.nan

    def as_dict(self) -> dict[str, float | int]:
        """The figures as plain JSON values."""
        return {
            "loss": self.loss,
            "perplexity": self.perplexity,
            "bits_per_byte": self.bits_per_byte,
            "tokens_per_byte": self.tokens_per_byte,
            "tokens": self.tokens,
            "bytes": self.bytes,
            "nats": self.nats,
            "windows": self.windows,
            "T": self.T,
            "stride": self.stride,
            "seconds": self.seconds,
        }


def score_stream(
    model: GPT,
    stream: TextStream,
    *,
    stride: int | None = None,
    batch_size: int = 8,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> TextScore:
    """Score every text token of `stream` once with windows of the model's `T` moving by
    `stride` (default `T`: disjoint blocks), `batch_size` windows per forward pass."""
    from tqdm import tqdm

    T = model.config.T
    stride = T if stride is None else stride
    check_stride(stride, T)
    if batch_size < 1:
        raise MyGPT2Error(f"batch_size must be at least 1, got {batch_size}.")
    if stream.text_tokens == 0:
        raise MyGPT2Error("the text is empty: nothing to score.")
    device = next(model.parameters()).device
    tokens = torch.from_numpy(stream.tokens).to(device)
    windows = sliding_windows(len(stream.tokens) - 1, T, stride)
    length = windows[0].end  # every window has this many inputs (T, or the whole stream)
    steps = torch.arange(length, device=device)
    was_training, start = model.training, time.perf_counter()
    model.eval()
    nats = 0.0
    bar = tqdm(
        total=stream.text_tokens, unit="tok", desc="scoring", disable=not progress, file=sys.stderr
    )
    try:
        with torch.inference_mode(), bar:
            for b in range(0, len(windows), batch_size):
                group = windows[b : b + batch_size]
                starts = torch.tensor([w.start for w in group], device=device)
                positions = starts[:, None] + steps  # (B, t)
                idx, targets = tokens[positions], tokens[positions + 1]
                first = torch.tensor([length - w.scored for w in group], device=device)
                scored = (steps >= first[:, None]) & (targets != stream.eot_id)
                nats += row_nll(model, idx, targets, scored, dtype).sum().item()
                bar.update(int(scored.sum()))
    finally:
        model.train(was_training)
    return TextScore(
        nats=nats,
        tokens=stream.text_tokens,
        bytes=stream.bytes,
        windows=len(windows),
        T=T,
        stride=stride,
        seconds=time.perf_counter() - start,
    )
