"""Tokenizer file formats as plain data: `tokenizer.json`, `vocab.json` + `merges.txt`, and
`.tiktoken`; `mygpt2.tokenizer.RegexTokenizer` builds itself from what these functions return.

- GPT-2's byte-level alphabet (`bytes_to_token_str`) writes token bytes as printable text, as
  Hugging Face's `tokenizer.json`, `vocab.json` and `merges.txt` do: printable Latin-1 bytes
  stand for themselves, the rest map to code points from 256 up, in byte order.
- `tokenizer.json` follows the Hugging Face `tokenizers` schema (BPE model, Split(regex) +
  ByteLevel pre-tokenizer, ByteLevel decoder, specials as added tokens), plus a
  `model.mygpt2` section with a format version and the split pattern (Hugging Face rejects
  unknown top-level keys but ignores them inside `model`). `ignore_merges` is set so that
  Hugging Face, like tiktoken, returns a chunk that is in the vocabulary as one token.
- Merges are checked when read: every multi-byte token is made by exactly one merge, and ids
  grow in merge order (tiktoken ranks by id, so both must agree).
"""

from __future__ import annotations

import base64
import json
import shlex
from pathlib import Path
from typing import Any

from mygpt2.errors import MyGPT2Error

EOT = "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    """Map every byte to a printable character: printable Latin-1 bytes map to themselves,
    the rest (control characters, space, ...) to code points from 256 up, in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    mapping: dict[int, str] = {}
    shifted = 0
    for b in range(256):
        if b in keep:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + shifted)
            shifted += 1
    return mapping


BYTE_TO_CHAR = _bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


def bytes_to_token_str(b: bytes) -> str:
    """Token bytes as a byte-level string, e.g. b' the' -> 'Ġthe'."""
    return "".join(BYTE_TO_CHAR[x] for x in b)


def token_str_to_bytes(s: str) -> bytes:
    """Inverse of `bytes_to_token_str`; KeyError on a character outside the alphabet."""
    return bytes(CHAR_TO_BYTE[c] for c in s)


def by_rank(kv: tuple[bytes, int]) -> int:
    return kv[1]


# ---- tokenizer.json -------------------------------------------------------------------------


def tokenizer_json(
    pattern: str,
    ranks: dict[bytes, int],
    merges: list[tuple[bytes, bytes]],
    special_tokens: dict[str, int],
    ours: dict[str, Any],
) -> dict[str, Any]:
    """A Hugging Face `tokenizers` document; `ours` becomes its `model.mygpt2` section."""
    vocab = {bytes_to_token_str(b): i for b, i in sorted(ranks.items(), key=by_rank)}
    # the specials in model.vocab too, as Hugging Face's own GPT-2 file has them: without them
    # its loader renumbers a special whose id leaves a gap (cl100k's <|endofprompt|>)
    vocab.update(special_tokens)
    added = [
        {
            "id": i,
            "content": s,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for s, i in sorted(special_tokens.items(), key=lambda kv: kv[1])
    ]
    split = {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated"}
    byte_level = {"add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {**split, "invert": False},
                {"type": "ByteLevel", **byte_level},
            ],
        },
        "post_processor": None,
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": True,
            "trim_offsets": True,
            "use_regex": True,
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": True,
            # our own fields: the HF loader ignores unknown keys here (not at top level)
            "mygpt2": ours,
            "vocab": vocab,
            "merges": [f"{bytes_to_token_str(a)} {bytes_to_token_str(b)}" for a, b in merges],
        },
    }


def missing_tokenizer_hint(path: str | Path, data: str = "", vocab_size: int = 8192) -> str:
    """What to run when the tokenizer file `path` does not exist: the command that makes it
    from `data` (the run's own --data when known), or how to train without one."""
    source = shlex.quote(data) if data else "PATH"
    make = (
        f"mygpt2 tokenizer train --data {source} --vocab_size {vocab_size} "
        f"--tokenizer_path {shlex.quote(str(path))}"
    )
    return (
        f"Make it first with `{make}`, then run this again. Or go without a trained one: "
        "`--tokenizer_path bytes` (the 256 byte values and end-of-text, nothing to train) or "
        "`--use_tiktoken true` (GPT-2's tokenizer)."
    )


def read_json(path: Path, what: str, hint: str = "", missing: str = "") -> Any:
    """A JSON file, or a clear error naming it (`missing`: what to say when there is none,
    `hint` otherwise)."""
    if not path.is_file():
        raise MyGPT2Error(f"{what} '{path}' does not exist. {missing or hint}".rstrip())
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MyGPT2Error(
            f"{what} '{path}' is not valid JSON ({e}); it may be truncated. {hint}".rstrip()
        ) from None


def parse_tokenizer_json(
    doc: Any, where: str, format_version: int, hint: str
) -> tuple[dict[str, int], list[Any], str, dict[str, int]]:
    """(vocab, merges, split pattern, special tokens) of a mygpt2 `tokenizer.json` document."""
    if not isinstance(doc, dict):
        raise MyGPT2Error(f"{where}: expected a JSON object, got {type(doc).__name__}.")
    model = doc.get("model")
    ours = model.get("mygpt2") if isinstance(model, dict) else None
    if not isinstance(ours, dict) or "format_version" not in ours:
        raise MyGPT2Error(
            f"{where} was not written by mygpt2 (it has no model.mygpt2 section with a "
            f"format_version). {hint}"
        )
    if ours["format_version"] != format_version:
        raise MyGPT2Error(
            f"{where} has format_version {ours['format_version']!r}; this mygpt2 reads "
            f"version {format_version}. Train the tokenizer again with this version."
        )
    try:
        if model.get("type", "BPE") != "BPE":
            raise MyGPT2Error(f"{where}: model type {model.get('type')!r} is not BPE.")
        specials = {t["content"]: t["id"] for t in doc.get("added_tokens", [])}
        vocab, merges, pattern = model["vocab"], model["merges"], ours["split_pattern"]
        if not isinstance(vocab, dict) or not isinstance(merges, list):
            raise TypeError("model.vocab must be an object and model.merges a list")
        # the specials' own entries in the vocab (files from before they were written there
        # have none): they are not byte-level tokens
        vocab = {s: i for s, i in vocab.items() if specials.get(s) != i}
        return vocab, merges, pattern, specials
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise MyGPT2Error(f"{where}: missing or malformed field {e}.") from None


def ranks_from_vocab_merges(
    vocab: dict[str, int], merges: list[Any], where: str
) -> tuple[dict[bytes, int], list[tuple[bytes, bytes]]]:
    """Ranks and merge pairs from byte-level `vocab` {token string: id} and `merges`
    ("a b" or [a, b]) in order, checked for consistency."""
    try:
        ranks = {token_str_to_bytes(s): int(i) for s, i in vocab.items()}
    except KeyError as e:
        raise MyGPT2Error(
            f"{where}: vocab has a character {e} outside the byte alphabet."
        ) from None
    except (TypeError, ValueError, AttributeError) as e:
        raise MyGPT2Error(f"{where}: malformed vocab ({e}).") from None
    if len(ranks) != len(vocab):
        raise MyGPT2Error(f"{where}: two vocab entries have the same bytes.")
    pairs: list[tuple[bytes, bytes]] = []
    last = -1
    for k, m in enumerate(merges):
        parts = m.split(" ") if isinstance(m, str) else list(m)
        if len(parts) != 2:
            raise MyGPT2Error(f"{where}: merge {k} ({m!r}) is not two tokens.")
        try:
            a, b = token_str_to_bytes(parts[0]), token_str_to_bytes(parts[1])
        except KeyError as e:
            raise MyGPT2Error(
                f"{where}: merge {k} has a character {e} outside the byte alphabet."
            ) from None
        rank = ranks.get(a + b)
        if a not in ranks or b not in ranks or rank is None:
            raise MyGPT2Error(f"{where}: merge {k} ({m!r}) uses or makes a token not in vocab.")
        # tiktoken ranks by id, so ids must grow in merge order for both to agree
        if rank <= last:
            raise MyGPT2Error(
                f"{where}: merge {k} ({m!r}) makes id {rank}, not above the previous merge's "
                f"id {last}; ids must follow merge order."
            )
        last = rank
        pairs.append((a, b))
    multi = sum(len(b) > 1 for b in ranks)
    if len(pairs) != multi:
        raise MyGPT2Error(
            f"{where}: {len(pairs)} merges for {multi} multi-byte tokens; every token longer "
            "than one byte needs exactly one merge."
        )
    return ranks, pairs


# ---- Hugging Face vocab.json + merges.txt ---------------------------------------------------


def read_hf_files(
    vocab_json: str | Path, merges_txt: str | Path, special_tokens: dict[str, int] | None
) -> tuple[dict[str, int], list[str], dict[str, int]]:
    """(vocab without specials, merges, specials) of GPT-2-style `vocab.json` + `merges.txt`.
    Specials default to the vocab entries that look like `<|...|>`."""
    for p in (vocab_json, merges_txt):
        if not Path(p).is_file():
            raise MyGPT2Error(f"file '{p}' does not exist.")
    vocab = read_json(Path(vocab_json), "file")
    if not isinstance(vocab, dict):
        raise MyGPT2Error(f"'{vocab_json}' must hold a JSON object of token -> id.")
    lines = Path(merges_txt).read_text(encoding="utf-8").splitlines()
    merges = [ln for ln in lines if ln and not ln.startswith("#version")]
    if special_tokens is None:
        special_tokens = {s: i for s, i in vocab.items() if s.startswith("<|") and s.endswith("|>")}
    vocab = {s: i for s, i in vocab.items() if s not in special_tokens}
    return vocab, merges, special_tokens


# ---- .tiktoken ------------------------------------------------------------------------------


def read_tiktoken_file(path: str | Path) -> dict[bytes, int]:
    """The ranks of a `.tiktoken` file (a base64 token and its rank per line)."""
    path = Path(path)
    if not path.is_file():
        raise MyGPT2Error(f"tiktoken file '{path}' does not exist.")
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                tok, rank = line.split()
                ranks[base64.b64decode(tok, validate=True)] = int(rank)
            except ValueError:
                raise MyGPT2Error(
                    f"tiktoken file '{path}' line {n} is not '<base64 token> <rank>'."
                ) from None
    return ranks


def tiktoken_text(ranks: dict[bytes, int]) -> str:
    """Ranks in `.tiktoken` form (special tokens are not part of that format)."""
    return "".join(
        f"{base64.b64encode(tok).decode('ascii')} {rank}\n"
        for tok, rank in sorted(ranks.items(), key=by_rank)
    )
