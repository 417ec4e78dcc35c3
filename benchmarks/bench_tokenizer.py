"""Tokenizer benchmark: training time and encode throughput, side by side on the same text.

    python benchmarks/bench_tokenizer.py --shakespeare ../shared/data/tinyshakespeare.txt

For each corpus (Tiny Shakespeare; a 20+ MB mix of the Python standard library and repeated
Shakespeare) and vocabulary size, it times

- our trainer (`RegexTokenizer.train`, GPT-4 split pattern, 2 worker processes),
- Hugging Face `tokenizers`' BpeTrainer with the same regex pre-split (Rust, all cores),
- a naive trainer written below the way the classic educational implementations do it:
  every chunk kept separately, all pairs recounted before every merge. It is far too slow
  for the full runs, so it is timed on a prefix of the text (labelled) and our trainer is
  timed on that same prefix for the ratio;

and the encode throughput (MB/s, one thread) of our tokenizer holding GPT-2's merges against
tiktoken's `gpt2` on the same text. Results go to docs/BENCHMARKS.md by hand.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import time
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import regex
import tiktoken
from tiktoken.load import load_tiktoken_bpe

from mygpt2.corpus import stdlib_files
from mygpt2.tokenizer import EOT, GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN, RegexTokenizer


def naive_train(text: str, vocab_size: int, pattern: str = GPT4_SPLIT_PATTERN) -> list:
    """Textbook BPE: keep every chunk, recount all pairs before each merge."""
    chunks = [list(c.encode("utf-8")) for c in regex.findall(pattern, text)]
    merges = []
    for k in range(vocab_size - 257):
        counts: Counter = Counter()
        for ids in chunks:
            counts.update(itertools.pairwise(ids))
        if not counts:
            break
        pair = min(counts, key=lambda p: (-counts[p], p))
        merges.append(pair)
        new = 256 + k
        for n, ids in enumerate(chunks):
            if len(ids) < 2:
                continue
            out, i = [], 0
            while i < len(ids):
                if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
                    out.append(new)
                    i += 2
                else:
                    out.append(ids[i])
                    i += 1
            chunks[n] = out
    return merges


def hf_train(docs: list[str], vocab_size: int, pattern: str = GPT4_SPLIT_PATTERN) -> int:
    """Hugging Face BpeTrainer with the same regex split and byte-level alphabet."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer)
    return tok.get_vocab_size()


def pieces(text: str, size: int = 1 << 16) -> list[str]:
    """Cut a text at newlines into ~64 KB documents, so that HF can spread them over cores."""
    out, start = [], 0
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end < 0 else end + 1
        out.append(text[start:end])
        start = end
    return out


def cpu_seconds() -> float:
    """CPU time of this process, its threads and its finished child processes."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def timed(fn: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    """(wall seconds, result) of one call."""
    t0 = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - t0, result


def timed_cpu(fn: Callable[..., Any], *args: Any) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one call: CPU time does not depend on other load."""
    c0, t0 = cpu_seconds(), time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0, cpu_seconds() - c0


def main() -> None:
    """Run the benchmark and print a table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shakespeare", default="../shared/data/tinyshakespeare.txt")
    ap.add_argument("--gpt2_tiktoken", default="../shared/data/gpt2.tiktoken")
    ap.add_argument("--vocab_sizes", default="512,4096,16384")
    ap.add_argument("--big_mb", type=float, default=20.0, help="size of the mixed corpus")
    ap.add_argument("--naive_chars", type=int, default=100_000, help="prefix for the naive one")
    ap.add_argument("--naive_vocab", type=int, default=4096)
    ap.add_argument("--parts", default="train,naive,encode", help="which parts to run")
    args = ap.parse_args()
    parts = set(args.parts.split(","))

    shakespeare = Path(args.shakespeare).read_text(encoding="utf-8")
    stdlib = [p.read_text(encoding="utf-8", errors="replace") for p in stdlib_files(1000)]
    big_docs = list(stdlib)
    while sum(map(len, big_docs)) < args.big_mb * 1e6:
        big_docs.append(shakespeare)
    big_mb = sum(len(d.encode("utf-8")) for d in big_docs) / 1e6
    corpora = {
        "tinyshakespeare (1.1 MB)": pieces(shakespeare),
        f"stdlib + Shakespeare repeated ({big_mb:.1f} MB)": [
            p for d in big_docs for p in pieces(d)
        ],
    }
    sizes = [int(v) for v in args.vocab_sizes.split(",")]
    print(f"python {platform.python_version()}, {platform.processor() or platform.machine()}")
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    if "train" in parts:
        train_part(corpora, sizes)
    if "naive" in parts:
        naive_part(shakespeare[: args.naive_chars], args.naive_vocab)
    if "encode" in parts:
        encode_part(
            args.gpt2_tiktoken, {"tinyshakespeare": shakespeare, "mixed corpus": "".join(big_docs)}
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


def train_part(corpora: dict[str, list[str]], sizes: list[int]) -> None:
    """Our trainer against tokenizers' BpeTrainer."""
    print("\n## training: wall seconds (CPU seconds); ratio = ours / hf, wall and CPU")
    print(f"{'corpus':<44} {'vocab':>6} {'ours':>15} {'hf':>15} {'ours/hf':>12}")
    for name, docs in corpora.items():
        for vocab in sizes:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ours, ours_cpu = timed_cpu(
                    lambda d, v: RegexTokenizer().train(d, v, num_proc=2), docs, vocab
                )
            hf, hf_cpu = timed_cpu(hf_train, docs, vocab)
            print(
                f"{name:<44} {vocab:>6} {ours:>6.2f} ({ours_cpu:>6.2f}) {hf:>6.2f} ({hf_cpu:>6.2f})"
                f" {ours / hf:>5.2f} ({ours_cpu / hf_cpu:.2f})"
            )


def naive_part(prefix: str, vocab_size: int) -> None:
    """Our trainer against the naive one, which must learn the same merges."""
    runs = [timed(lambda: RegexTokenizer().train(prefix, vocab_size, num_proc=1)) for _ in range(3)]
    ours, tok = min(runs, key=lambda r: r[0])  # best of 3: ours is short, so noise matters
    naive, merges = timed(naive_train, prefix, vocab_size)
    vocab = {i: bytes([i]) for i in range(256)}
    for k, (a, b) in enumerate(merges):
        vocab[256 + k] = vocab[a] + vocab[b]
    if [(vocab[a], vocab[b]) for a, b in merges] != tok.merges:
        raise SystemExit("the naive trainer and ours learned different merges")
    print(
        f"\n## naive recount-every-merge trainer, first {len(prefix)} chars of Shakespeare, "
        f"vocab {vocab_size}, same merges\nnaive {naive:.1f} s, ours {ours:.3f} s: "
        f"ours is {naive / ours:.0f}x faster"
    )


def encode_part(gpt2_tiktoken: str, texts: dict[str, str]) -> None:
    """Encode throughput of ours with GPT-2's merges against tiktoken's gpt2."""
    print("\n## encode throughput, GPT-2 merges, one thread (MB/s)")
    ranks = load_tiktoken_bpe(gpt2_tiktoken)
    ref = tiktoken.Encoding(
        name="gpt2", pat_str=GPT2_SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens={EOT: 50256}
    )
    gpt2 = RegexTokenizer.from_tiktoken_file(gpt2_tiktoken, "gpt2", {EOT: 50256})
    for name, text in texts.items():
        mb = len(text.encode("utf-8")) / 1e6
        best = {"ours": 1e9, "tiktoken": 1e9}
        for _ in range(3):  # best of three, alternating, so both see the same machine state
            best["ours"] = min(best["ours"], timed(gpt2.encode_ordinary, text)[0])
            best["tiktoken"] = min(best["tiktoken"], timed(ref.encode_ordinary, text)[0])
        assert gpt2.encode_ordinary(text[:100_000]) == ref.encode_ordinary(text[:100_000])
        o, t = mb / best["ours"], mb / best["tiktoken"]
        print(f"{name:<20} ours {o:6.2f} MB/s  tiktoken {t:6.2f} MB/s  ours/tiktoken {o / t:.2f}")


if __name__ == "__main__":
    main()
