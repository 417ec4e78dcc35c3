"""Split patterns: the regex that cuts text into chunks before BPE, checked once.

A tokenizer's pattern is `gpt2`, `gpt4` (named, from `mygpt2.bpe`) or a regex of the user's.
A custom one must compile in Python's `regex` and in tiktoken's engine (the fast encoder runs
it there), must never match the empty string, and must cut every character into some chunk:
either slip shows only at encode time otherwise (a panic in tiktoken's engine, text
silently dropped), so `resolve_pattern` refuses them when the tokenizer is made.
"""

from __future__ import annotations

import regex

from mygpt2.bpe import SPLIT_PATTERNS
from mygpt2.errors import MyGPT2Error


def resolve_pattern(pattern: str) -> str:
    """Turn `gpt2`, `gpt4` or a regex into a compiled-checked regex string."""
    pat = SPLIT_PATTERNS.get(pattern, pattern)
    if not pat:
        raise MyGPT2Error("split_pattern is empty: use gpt4, gpt2 or a regex.")
    try:
        regex.compile(pat)
    except regex.error as e:
        raise MyGPT2Error(
            f"split_pattern {pattern!r} is not a valid regex ({e}). Use gpt4, gpt2 or a regex."
        ) from None
    if pat not in SPLIT_PATTERNS.values():
        # the fast encoder runs the pattern in tiktoken's Rust engine: check it there too,
        # before any training time is spent
        import tiktoken

        try:
            tiktoken.Encoding(
                name="check",
                pat_str=pat,
                mergeable_ranks={bytes([i]): i for i in range(256)},
                special_tokens={},
            )
        except ValueError as e:
            raise MyGPT2Error(
                f"split_pattern {pattern!r} compiles in Python but not in tiktoken's regex "
                f"engine ({e}). Use syntax both understand."
            ) from None
        check_pattern_covers(pattern, pat)
    return pat


# Letters, digits, punctuation, whitespace of every kind, accents, CJK, emoji: a custom split
# pattern must cut this into pieces that join back to it, none empty
PATTERN_PROBE = " Hello, World! It's 2024:\tcafé naïve_x-y 日本語 🤖👍🏽 (a+b)\r\n  z\u00a0w\n\n"


def check_pattern_covers(name: str, pat: str) -> None:
    """Refuse a split pattern that can match the empty string (tiktoken's engine fails on it at
    every encode) or that leaves characters out (encoding would drop them), found on
    `PATTERN_PROBE`."""
    at = 0
    for m in regex.finditer(pat, PATTERN_PROBE):
        if m.start() > at:
            break
        if m.end() == m.start():
            raise MyGPT2Error(
                f"split_pattern {name!r} matches the empty string (in {_probe_at(m.start())}); "
                "make every alternative take at least one character."
            )
        at = m.end()
    if at < len(PATTERN_PROBE):
        raise MyGPT2Error(
            f"split_pattern {name!r} leaves characters out: it skips {PATTERN_PROBE[at]!r} in "
            f"{_probe_at(at)}, which encoding would drop. End it with an alternative for every "
            "other character, e.g. |\\s+|[^\\s]"
        )


def _probe_at(i: int) -> str:
    return f"{PATTERN_PROBE[max(0, i - 8) : i + 8]!r}, character {i} of a probe text"


def pattern_name(pattern: str) -> str:
    """`gpt2`/`gpt4` for the built-in patterns, else `custom`."""
    return next((name for name, pat in SPLIT_PATTERNS.items() if pat == pattern), "custom")
