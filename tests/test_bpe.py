"""Tests of mygpt2.bpe, the BPE trainer: the incremental merge loop against a textbook
brute-force BPE, and parallel, cut pre-tokenization against one regex pass."""

from __future__ import annotations

import itertools
import warnings
from collections import Counter
from pathlib import Path

import pytest
import regex
from hypothesis import given, strategies as st
from models import FAST, unicode_text

from mygpt2 import bpe
from mygpt2.bpe import count_chunks, train_merges
from mygpt2.errors import MyGPT2Error
from mygpt2.tokenizer import GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN, RegexTokenizer


def brute_force_merges(words: dict[bytes, int], num_merges: int) -> list[tuple[int, int]]:
    """Textbook BPE: recount every pair of the whole corpus before each merge."""
    seqs = [(list(w), f) for w, f in words.items()]
    merges = []
    for k in range(num_merges):
        counts: Counter = Counter()
        for w, f in seqs:
            for pair in itertools.pairwise(w):
                counts[pair] += f
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))  # highest count, then smallest pair
        merges.append(best)
        for w, _ in seqs:
            i = 0
            while i < len(w) - 1:
                if (w[i], w[i + 1]) == best:
                    w[i : i + 2] = [256 + k]
                i += 1
    return merges


@FAST
@given(
    st.dictionaries(
        st.binary(min_size=1, max_size=8).map(lambda b: bytes(x % 4 + 97 for x in b)),
        st.integers(1, 5),
        max_size=12,
    ),
    st.integers(1, 30),
)
def test_trainer_matches_brute_force(words: dict[bytes, int], num_merges: int) -> None:
    assert train_merges(words, num_merges) == brute_force_merges(words, num_merges)


@FAST
@given(st.lists(st.text(alphabet="ab c\né!1", max_size=30), min_size=1, max_size=6))
def test_train_matches_brute_force_on_text(docs: list[str]) -> None:
    pattern = regex.compile(GPT4_SPLIT_PATTERN)
    words: Counter = Counter()
    for doc in docs:
        for chunk in pattern.findall(doc):
            words[chunk.encode()] += 1
    if not words:
        return
    expected = brute_force_merges(dict(words), 20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small corpora run out of pairs
        tok = RegexTokenizer().train(docs, 256 + 20 + 1)
    vocab = {i: bytes([i]) for i in range(256)}
    for k, (a, b) in enumerate(expected):
        vocab[256 + k] = vocab[a] + vocab[b]
    assert tok.merges == [(vocab[a], vocab[b]) for a, b in expected]
    assert tok.vocab_size == 256 + len(expected) + 1 and tok.eot_id == tok.vocab_size - 1


def test_parallel_pre_tokenization_is_exact(
    shakespeare_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # small blocks force many cuts and the 2-process path; counts must equal one regex pass
    monkeypatch.setattr(bpe, "BLOCK_CHARS", 50_000)
    monkeypatch.setattr(bpe, "PARALLEL_MIN_CHARS", 1)
    text = shakespeare_path.read_text(encoding="utf-8") + "\n\n  \n  tail  "
    for pattern in (GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN):
        expected = Counter(regex.findall(pattern, text))
        assert count_chunks(text, pattern, num_proc=2) == expected
        assert count_chunks([text[:1000], text[1000:]], pattern, num_proc=1) == Counter(
            regex.findall(pattern, text[:1000])
        ) + Counter(regex.findall(pattern, text[1000:]))


@FAST
@given(unicode_text)
def test_cut_documents_count_like_one_pass(text: str) -> None:
    text = text * 5
    for pattern in (GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN):
        old = bpe.BLOCK_CHARS
        bpe.BLOCK_CHARS = 7
        try:
            got = count_chunks(text, pattern, num_proc=1)
        finally:
            bpe.BLOCK_CHARS = old
        assert got == Counter(regex.findall(pattern, text))


# ------------------------------------------------------------- defaults and boundaries (#22)


def test_a_special_token_inside_a_longer_one_does_not_split_it() -> None:
    """Specials are matched longest first: with both `<|x|>` and `<|x|>!` special, the text
    `ab<|x|>!cd` is the documents `ab` and `cd`, with no `!` chunk left behind."""
    for specials in (["<|x|>", "<|x|>!"], ["<|x|>!", "<|x|>"]):
        got = count_chunks("ab<|x|>!cd", GPT2_SPLIT_PATTERN, specials, num_proc=1)
        assert got == Counter({"ab": 1, "cd": 1})


def test_the_smallest_vocabulary_is_the_bytes_plus_the_specials() -> None:
    """256 + specials is allowed (no merges); one fewer is refused, naming the minimum."""
    bpe.check_vocab_size(256, 0)
    bpe.check_vocab_size(258, 2)
    with pytest.raises(MyGPT2Error, match=r"too small: .* = 258 at least"):
        bpe.check_vocab_size(257, 2)
    tok = RegexTokenizer().train("hello hello", 257)  # 256 bytes + end-of-text, no merge
    assert tok.merges == [] and tok.vocab_size == 257 and tok.eot_id == 256
