"""Training a byte-level BPE: parallel pre-tokenization and the exact incremental merge loop.

`mygpt2.tokenizer.RegexTokenizer.train` calls `count_chunks` and `train_merges`; this module
knows nothing of the tokenizer's files or encoders.

- Training is exact greedy BPE. Each distinct chunk is stored once with its frequency; pair
  counts are kept in a dict and updated incrementally, only for the chunks that contain the
  merged pair; a heap with lazy deletion finds the best pair. Ties are broken by the smallest
  pair of token ids, so a merge is chosen by `max(count)`, then `min((left_id, right_id))`:
  deterministic, independent of dict order, and checked against a brute-force recount in the
  tests. Pairs are counted as in every textbook BPE: all adjacent positions, so `aaa` holds
  the pair `(a, a)` twice.
- Pre-tokenization (the regex pass) is the slow part for big inputs, so it runs in worker
  processes on blocks of about 1 MB, streamed, with a progress bar. Documents are split
  independently. With the GPT-2 and GPT-4 patterns a long document is also cut, after a
  newline followed by a non-space character: no chunk of those patterns can cross such a
  point, and each piece sees a little text beyond its end for lookaheads, so the counts are
  exactly those of one pass (a test checks this). Custom patterns are never cut.
"""

from __future__ import annotations

import heapq
import itertools
import multiprocessing
import os
import sys
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import regex

from mygpt2.errors import MyGPT2Error

# The split pattern of GPT-2 (tiktoken's r50k/gpt2 form: possessive quantifiers, same cuts).
GPT2_SPLIT_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
)
# The split pattern of GPT-4 (cl100k_base): case-insensitive contractions, digits in 1-3s.
GPT4_SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
SPLIT_PATTERNS = {"gpt2": GPT2_SPLIT_PATTERN, "gpt4": GPT4_SPLIT_PATTERN}


BLOCK_CHARS = 1 << 20  # text per pre-tokenization task
PARALLEL_MIN_CHARS = 2 << 20  # below this, worker processes cost more than they save
_CONTEXT_CHARS = 64  # lookahead text given to a block beyond its own end


_worker_pattern: regex.Pattern | None = None


def _init_worker(pattern: str) -> None:
    global _worker_pattern
    _worker_pattern = regex.compile(pattern)


def _count_block(block: list[tuple[str, int]]) -> Counter:
    """Count the chunks of some texts; each is (text with lookahead, length it owns)."""
    if _worker_pattern is None:
        raise RuntimeError("_init_worker was not called")
    counts: Counter = Counter()
    for text, own in block:
        chunks = _worker_pattern.findall(text)
        if own < len(text):
            # the built-in patterns match every character, so the chunks tile the text: drop
            # those that start in the lookahead, counting back from the end
            end = len(text)
            while end > own:
                end -= len(chunks.pop())
            if end != own:  # cannot happen for the patterns we cut (see _split_document)
                raise RuntimeError(f"a chunk crosses a block boundary at {own}")
        counts.update(chunks)
    return counts


def _cut_points(text: str, block: int) -> list[int]:
    """Positions about `block` apart where a newline is followed by a non-space character."""
    cuts = [0]
    while len(text) - cuts[-1] > block:
        i = cuts[-1] + block
        while True:
            i = text.find("\n", i)
            if i < 0 or i + 1 >= len(text):
                return [*cuts, len(text)]
            if not text[i + 1].isspace():
                break
            i += 1
        cuts.append(i + 1)
    return [*cuts, len(text)]


def _split_document(text: str, block: int, pattern: str) -> Iterator[tuple[str, int]]:
    """One document as (text with lookahead, owned length) pieces. Only the built-in patterns
    are cut: none of their alternatives matches a newline followed by a non-space character
    (letters and punctuation take at most a literal space in front, whitespace runs stop
    before non-space), and together they match every character, so each cut point starts a
    chunk in the one-pass split too."""
    if pattern not in SPLIT_PATTERNS.values():
        yield text, len(text)
        return
    cuts = _cut_points(text, block)
    for a, b in itertools.pairwise(cuts):
        yield text[a : b + _CONTEXT_CHARS], b - a


def _iter_documents(data: Any) -> Iterator[str]:
    """Texts from a str (one document), a Path, or an iterable of str / Path (files)."""
    if isinstance(data, str):
        yield data
        return
    if isinstance(data, (os.PathLike)):
        data = [data]
    for item in data:
        if isinstance(item, os.PathLike):
            path = Path(item)
            if not path.is_file():
                raise MyGPT2Error(f"training file '{path}' does not exist.")
            yield path.read_text(encoding="utf-8", errors="replace")
        elif isinstance(item, str):
            yield item
        else:
            raise MyGPT2Error(
                f"cannot train on a {type(item).__name__}: give text (str), a Path, "
                "or an iterable of str or Path."
            )


def count_chunks(
    data: Any,
    pattern: str,
    special_tokens: Iterable[str] = (),
    num_proc: int | None = None,
    verbose: bool = False,
) -> Counter:
    """Pre-tokenize a corpus: {chunk string: count}. Special-token strings in the text are
    document separators and are not counted. Large inputs use `num_proc` worker processes."""
    specials = sorted(special_tokens, key=len, reverse=True)
    special_re = regex.compile("|".join(regex.escape(s) for s in specials)) if specials else None

    def tasks() -> Iterator[tuple[list[tuple[str, int]], int]]:
        batch: list[tuple[str, int]] = []
        size = 0
        for doc in _iter_documents(data):
            parts = special_re.split(doc) if special_re else [doc]
            for part in parts:
                for piece in _split_document(part, BLOCK_CHARS, pattern):
                    batch.append(piece)
                    size += piece[1]
                    if size >= BLOCK_CHARS:
                        yield batch, size
                        batch, size = [], 0
        if batch:
            yield batch, size

    from tqdm import tqdm

    total: Counter = Counter()
    bar = tqdm(
        unit="B", unit_scale=True, desc="pre-tokenizing", disable=not verbose, file=sys.stderr
    )
    num_proc = max(1, num_proc or os.cpu_count() or 1)
    it = tasks()
    first = list(_take(it, 2))
    big = len(first) > 1 and sum(n for _, n in first) >= PARALLEL_MIN_CHARS
    if num_proc == 1 or not big:
        _init_worker(pattern)
        for block, n in itertools.chain(first, it):
            total.update(_count_block(block))
            bar.update(n)
    else:
        ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
        with ctx.Pool(num_proc, initializer=_init_worker, initargs=(pattern,)) as pool:
            pending: deque = deque()
            for block, n in itertools.chain(first, it):
                pending.append((pool.apply_async(_count_block, (block,)), n))
                # keep a bounded number of blocks in flight so memory stays flat on huge inputs
                while len(pending) > 2 * num_proc:
                    _collect(pending.popleft(), total, bar)
            while pending:
                _collect(pending.popleft(), total, bar)
    bar.close()
    return total


def _take(it: Iterator, n: int) -> Iterator:
    for _ in range(n):
        try:
            yield next(it)
        except StopIteration:
            return


def _collect(item: tuple, total: Counter, bar: Any) -> None:
    result, n = item
    total.update(result.get())
    bar.update(n)


def train_merges(
    words: dict[bytes, int], num_merges: int, verbose: bool = False
) -> list[tuple[int, int]]:
    """Greedy byte-level BPE over distinct chunks with counts; returns the merged id pairs.

    Merge k creates token 256 + k. Each step merges the pair with the highest count over the
    whole corpus; ties go to the smallest (left id, right id). Only chunks that hold the merged
    pair are touched, and pair counts change by the difference between the chunk's pairs before
    and after, times its frequency: {b'abab': 1} -> (97, 98) first, then (256, 256).
    """
    ids: list[list[int]] = []
    freqs: list[int] = []
    for chunk, freq in words.items():
        if len(chunk) > 1:  # a one-byte chunk has no pairs and never changes
            ids.append(list(chunk))
            freqs.append(freq)
    counts: dict[tuple[int, int], int] = {}
    where: dict[tuple[int, int], set[int]] = {}  # pair -> chunks that hold (or held) it
    for i, w in enumerate(ids):
        f = freqs[i]
        for pair in itertools.pairwise(w):
            counts[pair] = counts.get(pair, 0) + f
            where.setdefault(pair, set()).add(i)
    # heap of (-count, pair): the top is the highest count, smallest pair. Entries go stale
    # when a count changes; the current count is pushed anew and stale ones are skipped.
    heap = [(-c, pair) for pair, c in counts.items()]
    heapq.heapify(heap)

    from tqdm import tqdm

    merges: list[tuple[int, int]] = []
    bar = tqdm(total=num_merges, desc="merging", disable=not verbose, file=sys.stderr)
    while len(merges) < num_merges:
        while heap:
            neg, pair = heapq.heappop(heap)
            if counts.get(pair) == -neg:
                break
        else:
            break  # no pairs left: every chunk is a single token
        new = 256 + len(merges)
        merges.append(pair)
        a, b = pair
        delta: dict[tuple[int, int], int] = {}
        for i in where.pop(pair):
            w = ids[i]
            n = len(w)
            sites = _merge_sites(w, a, b)
            if not sites:
                continue  # an earlier merge already consumed this chunk's pair
            f = freqs[i]
            out: list[int] = []
            start = 0
            for j in sites:
                out += w[start:j]
                out.append(new)
                start = j + 2
            out += w[start:]
            # Only pairs touching a merge site change: in w those at k = j-1, j, j+1; in out
            # those at m-1 and m, where m = j - (merges before it) is the new token's place.
            last = -1
            for j in sites:
                for k in (j - 1, j, j + 1):
                    if last < k < n - 1:
                        p = (w[k], w[k + 1])
                        delta[p] = delta.get(p, 0) - f
                        last = k
            last = -1
            for shift, j in enumerate(sites):
                for k in (j - shift - 1, j - shift):
                    if last < k < len(out) - 1:
                        p = (out[k], out[k + 1])
                        delta[p] = delta.get(p, 0) + f
                        where.setdefault(p, set()).add(i)
                        last = k
            ids[i] = out
        for p, d in delta.items():
            if d:
                c = counts.get(p, 0) + d
                if c:
                    counts[p] = c
                    heapq.heappush(heap, (-c, p))
                else:
                    del counts[p]
        bar.update(1)
    bar.close()
    return merges


def _merge_sites(w: list[int], a: int, b: int) -> list[int]:
    """Where the pair (a, b) starts in w, left to right without overlaps: [a, a, a] has (a, a)
    at [0] only, since merging the first two leaves nothing for the third to pair with."""
    sites = []
    j, n = 0, len(w)
    while True:
        try:
            j = w.index(a, j)  # a C scan: far faster than a Python loop over every token
        except ValueError:
            return sites
        if j + 1 < n and w[j + 1] == b:
            sites.append(j)
            j += 2
        else:
            j += 1


def check_vocab_size(vocab_size: int, num_specials: int) -> None:
    """Refuse a vocabulary too small for the 256 bytes plus the special tokens."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise MyGPT2Error(f"vocab_size must be an int, got {vocab_size!r}.")
    if vocab_size < 256 + num_specials:
        raise MyGPT2Error(
            f"vocab_size {vocab_size} is too small: a byte-level BPE needs 256 byte tokens "
            f"+ {num_specials} special token(s) = {256 + num_specials} at least."
        )
