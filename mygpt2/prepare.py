"""Corpus to token files: `train.bin`, `val.bin` and `meta.json`, prepared once and reused.

`mygpt2 prepare --data X` (or `import_data.py`, the original entry point) tokenizes a corpus
(see `mygpt2.corpus`) with the tokenizer in use; training calls `ensure_prepared`, so
`--data X` prepares X on first use and reuses it afterwards.

Layout: one directory per (source, tokenizer) pair, `<cache_dir>/<source>-<tokenizer>-<hash>`
(`cache_dir` defaults to `$MYGPT2_CACHE`, else the per-user cache directory such as
`~/.cache/mygpt2`, never the working directory), or exactly `data_dir` when
that is set. It holds
- `train.bin`, `val.bin`: raw little-endian token ids, uint16 when the vocabulary fits in
  16 bits, else uint32, read back with `np.memmap`;
- `meta.json`: format version, tokenizer name, fingerprint and vocab size, dtype, token
  counts, split, newline and end-of-text ids, source description and fingerprint. JSON, not
  pickle: reading it never runs code.

Design choices:
- Documents are joined with the end-of-text token: it goes *between* documents, so decoding
  train + val gives back `"<|endoftext|>".join(documents)` (empty documents are dropped).
- Bounded memory: text is encoded in pieces of about `CHUNK_CHARS` characters, a few per
  thread, and appended to a file. A long document is cut only where both the GPT-2 and
  GPT-4 split patterns always end a pre-token (after a newline between two non-space
  characters, else before a space after a non-space character), so the tokens equal those
  of encoding the whole document at once (tested against whole-text encoding).
- Parallel: each batch of pieces goes to the tokenizer's `encode_ordinary_batch` with one
  thread per core (tiktoken's Rust core releases the GIL), while this thread reads and
  writes the next batch.
- Split while streaming: all tokens go to one temporary file; at the end the last
  `1 - split` fraction of the tokens is copied to `val.bin` and the file is truncated to
  become `train.bin`. Exact, in order (as the original myGPT2 split), and bounded in memory.
- Atomic: everything is written in a temporary directory inside the target and renamed in
  at the end, `meta.json` last. Any error (empty corpus, too few tokens for a block, bad
  bytes under `strict_utf8`, ...) leaves existing prepared files untouched.
- Reuse: a directory is current when its `meta.json` has this format version, tokenizer
  fingerprint, split and source fingerprint, and the files have the sizes it records.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from mygpt2.config import Config
from mygpt2.corpus import Corpus, open_corpus
from mygpt2.errors import MyGPT2Error
from mygpt2.fileio import user_cache_dir
from mygpt2.split_pattern import pattern_name

FORMAT_VERSION = 1
CHUNK_CHARS = 1 << 18  # encode text in pieces of about this many characters
PIECES_PER_THREAD = 2  # pieces per thread in one encode_ordinary_batch call
COPY_TOKENS = 1 << 22  # tokens per read when copying the val tail out


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits in 16 bits (GPT-2's 50257 does), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def newline_id(tok: Any) -> int:
    """The id of "\\n" (the original's padding token); end-of-text if "\\n" is not one token."""
    ids = tok.encode_ordinary("\n")
    return ids[0] if len(ids) == 1 else tok.eot_id


def prepared_dir(cfg: Config, tok: Any, corpus: Corpus | None = None) -> Path:
    """Where the token files for this source and tokenizer live (`data_dir` if set)."""
    if cfg.data.data_dir:
        return Path(cfg.data.data_dir)
    corpus = corpus or open_corpus(cfg.data)
    key = hashlib.sha256(f"{corpus.identity}\n{tok.fingerprint()}".encode()).hexdigest()[:10]
    source = re.sub(r"[^A-Za-z0-9._]+", "-", corpus.identity.rsplit("/", 1)[-1]).strip("-.")
    name = re.sub(r"[^A-Za-z0-9._]+", "-", re.split(r"[:/\\]", tok.name)[-1]).strip("-.")
    return user_cache_dir(cfg.data.cache_dir) / f"{source[:40] or 'data'}-{name[:30]}-{key}"


# ----------------------------------------------------------------------------- reading back


def read_meta(directory: Path) -> dict[str, Any]:
    """meta.json of a prepared directory, checked for presence and format version."""
    path = directory / "meta.json"
    if not path.is_file():
        raise MyGPT2Error(
            f"'{directory}' has no meta.json, so its token files cannot be trusted. "
            "Run 'mygpt2 prepare' with the same --data and --data_dir to (re)make them."
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MyGPT2Error(
            f"'{path}' is not valid JSON ({e}); run 'mygpt2 prepare' again."
        ) from None
    version = meta.get("version") if isinstance(meta, dict) else None
    if version != FORMAT_VERSION:
        raise MyGPT2Error(
            f"'{path}' is token-file format version {version!r}; this mygpt2 reads version "
            f"{FORMAT_VERSION}. Run 'mygpt2 prepare' again to remake the files."
        )
    return meta


def check_tokenizer(meta: dict[str, Any], tok: Any, directory: Path) -> None:
    """Refuse token files made by another tokenizer, naming both."""
    made = meta["tokenizer"]
    if made["fingerprint"] != tok.fingerprint():
        raise MyGPT2Error(
            f"the token files in '{directory}' were made with tokenizer '{made['name']}' "
            f"(fingerprint {made['fingerprint'][:12]}, vocab {made['vocab_size']}), but this run "
            f"uses '{tok.name}' (fingerprint {tok.fingerprint()[:12]}, vocab {tok.vocab_size}). "
            "Use the same tokenizer, or prepare the data again into another --data_dir."
        )


def check_split_sizes(n_total: int, n_train: int, n_val: int, split: float) -> None:
    """Each split must hold at least one (input, target) pair, i.e. two tokens. Whether they
    hold a block of the run's context length is the data loader's check (`mygpt2.data`)."""
    if n_total == 0:
        raise MyGPT2Error("the corpus is empty: it holds no text to tokenize.")
    for name, n, fix in (
        ("train", n_train, "Raise split or use a bigger corpus."),
        ("val", n_val, "Lower split or use a bigger corpus."),
    ):
        if n < 2:
            raise MyGPT2Error(
                f"the {name} split has {n} token(s) (split = {split}, {n_total} tokens in all); "
                f"it needs at least 2. {fix}"
            )


def _open_tokens(path: Path, dtype: np.dtype, count: int) -> np.memmap:
    if not path.is_file():
        raise MyGPT2Error(f"'{path}' is missing; run 'mygpt2 prepare' again.")
    size = path.stat().st_size
    if size != count * dtype.itemsize:
        raise MyGPT2Error(
            f"'{path}' is {size} bytes, but meta.json says {count} {dtype.name} tokens "
            f"({count * dtype.itemsize} bytes): the file is truncated or not from this "
            "preparation. Run 'mygpt2 prepare' again."
        )
    return np.memmap(path, dtype=dtype, mode="r")


def open_prepared(cfg: Config, tok: Any) -> tuple[np.memmap, np.memmap, dict[str, Any]]:
    """Memory-map train.bin and val.bin after checking meta.json, tokenizer and sizes."""
    directory = prepared_dir(cfg, tok)
    meta = read_meta(directory)
    check_tokenizer(meta, tok, directory)
    try:
        dtype = np.dtype(meta["dtype"])
        n_train, n_val = int(meta["train_tokens"]), int(meta["val_tokens"])
    except (KeyError, TypeError, ValueError) as e:
        raise MyGPT2Error(f"'{directory / 'meta.json'}' is damaged ({e}); prepare again.") from None
    if dtype not in (np.dtype(np.uint16), np.dtype(np.uint32)):
        raise MyGPT2Error(f"'{directory / 'meta.json'}' names dtype {dtype}; prepare again.")
    check_split_sizes(n_train + n_val, n_train, n_val, meta.get("split", 0))
    train = _open_tokens(directory / "train.bin", dtype, n_train)
    val = _open_tokens(directory / "val.bin", dtype, n_val)
    return train, val, {**meta, "directory": str(directory)}  # where they are, for messages


def _is_current(directory: Path, cfg: Config, tok: Any, corpus: Corpus) -> bool:
    """True when the files there were made from this content, tokenizer and split."""
    try:
        meta = read_meta(directory)
        dtype = np.dtype(meta["dtype"])
        for name in ("train", "val"):
            size = (directory / f"{name}.bin").stat().st_size
            if size != int(meta[f"{name}_tokens"]) * dtype.itemsize:
                return False
        return (
            meta["tokenizer"]["fingerprint"] == tok.fingerprint()
            and meta["source"]["fingerprint"] == corpus.fingerprint
            and meta["split"] == cfg.data.split
            # files made with replaced bytes do not count as strict: redo (and refuse) them
            and not (cfg.data.strict_utf8 and meta.get("replaced_bytes", 0) > 0)
        )
    except (MyGPT2Error, OSError, KeyError, TypeError, ValueError):
        return False


def ensure_prepared(
    cfg: Config, tok: Any, *, progress: bool = True
) -> tuple[np.memmap, np.memmap, dict[str, Any]]:
    """Prepare the corpus unless current files exist, then open them (what training calls)."""
    prepare(cfg, tok, progress=progress, corpus=open_corpus(cfg.data))
    return open_prepared(cfg, tok)


def _check_explicit_dir(cfg: Config, tok: Any, corpus: Corpus, directory: Path) -> None:
    """An explicit data_dir may hold another corpus's or tokenizer's tokens: never replace them
    silently (training and `mygpt2 prepare` alike)."""
    if not (cfg.data.data_dir and (directory / "meta.json").is_file()):
        return
    meta = read_meta(directory)
    check_tokenizer(meta, tok, directory)
    made_from = meta.get("source", {}).get("identity")
    if made_from != corpus.identity:
        raise MyGPT2Error(
            f"'{directory}' holds tokens of {meta['source'].get('description')}, but data "
            f"is '{cfg.data.data}'. Pass the same --data, or choose another --data_dir."
        )


# ----------------------------------------------------------------------------- writing


def _cut_point(text: str, lo: int, hi: int) -> int:
    """An index in (lo, hi) where text can be cut without changing its tokens, or -1.

    Preferred: after a newline with a non-space character on both sides. Else: before a
    space that follows a non-space character. No GPT-2 or GPT-4 pre-token spans either
    place, and the piece before the cut ends in at most one newline, so GPT-2's `\\s+$`
    (trailing whitespace at the very end of a text) cannot merge more there.
    """
    i = text.rfind("\n", lo, hi)
    while i > lo:
        if i + 1 < len(text) and not text[i - 1].isspace() and not text[i + 1].isspace():
            return i + 1
        i = text.rfind("\n", lo, i)
    i = text.rfind(" ", lo, hi)
    while i > lo:
        if not text[i - 1].isspace():
            return i
        i = text.rfind(" ", lo, i)
    return -1


def _chunks(corpus: Corpus, chunk_chars: int | None) -> Iterator[tuple[bool, str]]:
    """(end-of-text before it?, text) pieces of about chunk_chars, cut at safe points; with
    `chunk_chars` None, whole documents."""
    first_document = True
    for document in corpus.documents():
        buffer, started = "", False
        for piece in document:
            buffer += piece
            while chunk_chars is not None and len(buffer) >= 2 * chunk_chars:
                cut = _cut_point(buffer, chunk_chars, 2 * chunk_chars)
                if cut < 0:
                    # No safe point in a long stretch (a minified file?): cut anyway; the
                    # tokens around this one cut may differ from whole-document encoding.
                    cut = 2 * chunk_chars
                yield not first_document and not started, buffer[:cut]
                buffer, started = buffer[cut:], True
        if buffer:
            yield not first_document and not started, buffer
            started = True
        if started:
            first_document = False


class _TokenWriter:
    """Encodes batches of pieces on a helper thread while the caller reads the next batch."""

    def __init__(self, tok: Any, fh: Any, dtype: np.dtype, threads: int, bar: Any) -> None:
        self.tok, self.fh, self.dtype, self.threads, self.bar = tok, fh, dtype, threads, bar
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.pending: Future | None = None
        self.batch: list[tuple[bool, str]] = []  # the pieces of the pending encode
        self.tokens = 0

    def submit(self, batch: list[tuple[bool, str]]) -> None:
        texts = [text for _, text in batch]
        future = self.pool.submit(self.tok.encode_ordinary_batch, texts, num_threads=self.threads)
        self.finish()
        self.pending, self.batch = future, batch

    def finish(self) -> None:
        if self.pending is None:
            return
        encoded, self.pending = self.pending.result(), None
        for (eot_before, text), ids in zip(self.batch, encoded, strict=True):
            if eot_before:
                np.array([self.tok.eot_id], dtype=self.dtype).tofile(self.fh)
                self.tokens += 1
            # fromiter with a known count: the cheapest way from a list of ints to an array
            np.fromiter(ids, dtype=self.dtype, count=len(ids)).tofile(self.fh)
            self.tokens += len(ids)
            self.bar.update(len(text.encode("utf-8", "replace")))

    def close(self) -> None:
        self.finish()
        self.pool.shutdown()


def _copy_tail(src: Path, dst: Path, start: int, dtype: np.dtype) -> None:
    """Copy tokens from `start` to the end of src into dst, a block at a time."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        fin.seek(start * dtype.itemsize)
        for block in iter(lambda: fin.read(COPY_TOKENS * dtype.itemsize), b""):
            fout.write(block)


def prepare(
    cfg: Config,
    tok: Any,
    *,
    progress: bool = True,
    force: bool = False,
    corpus: Corpus | None = None,
) -> Path:
    """Tokenize the corpus into train.bin/val.bin/meta.json (reused when current); the dir."""
    from tqdm import tqdm

    corpus = corpus or open_corpus(cfg.data)
    directory = prepared_dir(cfg, tok, corpus)
    _check_explicit_dir(cfg, tok, corpus, directory)
    for warning in corpus.warnings:  # the command line shows warnings as one line each
        warnings.warn(warning, stacklevel=2)
    if not force and _is_current(directory, cfg, tok, corpus):
        return directory
    if progress:
        print(f"mygpt2: preparing {corpus.description} -> {directory}", file=sys.stderr)
    dtype = token_dtype(tok.vocab_size)
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = max(1, threads or 1)
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".tmp-", dir=directory))
    try:
        all_path = work / "all.bin"
        bar = tqdm(
            total=corpus.total_bytes,
            unit="B",
            unit_scale=True,
            unit_divisor=1000,
            desc="tokenizing",
            disable=not progress,
        )
        with open(all_path, "wb") as fh, bar:
            writer = _TokenWriter(tok, fh, dtype, threads, bar)
            try:
                batch: list[tuple[bool, str]] = []
                # the safe cut points hold for GPT-2's and GPT-4's patterns only: a custom
                # pattern's pre-tokens may span them, so its documents are encoded whole
                cuts = CHUNK_CHARS if pattern_name(tok.pattern) != "custom" else None
                for chunk in _chunks(corpus, cuts):
                    batch.append(chunk)
                    if len(batch) >= threads * PIECES_PER_THREAD:
                        writer.submit(batch)
                        batch = []
                if batch:
                    writer.submit(batch)
            finally:
                writer.close()
        n_total = writer.tokens
        n_train = int(n_total * cfg.data.split)
        n_val = n_total - n_train
        check_split_sizes(n_total, n_train, n_val, cfg.data.split)
        _copy_tail(all_path, work / "val.bin", n_train, dtype)
        os.truncate(all_path, n_train * dtype.itemsize)
        meta = {
            "format": "mygpt2 token files",
            "version": FORMAT_VERSION,
            "tokenizer": {
                "name": tok.name,
                "fingerprint": tok.fingerprint(),
                "vocab_size": tok.vocab_size,
            },
            "eot_id": tok.eot_id,
            "newline_id": newline_id(tok),
            "dtype": dtype.name,
            "train_tokens": n_train,
            "val_tokens": n_val,
            "split": cfg.data.split,
            "source": {
                "data": cfg.data.data,
                "identity": corpus.identity,
                "description": corpus.description,
                "fingerprint": corpus.fingerprint,
            },
            "replaced_bytes": corpus.replaced_bytes,
            "warnings": corpus.warnings,
        }
        (work / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        # Install: drop the old meta.json first, so an interruption between the renames
        # leaves a directory that reads as "not prepared" rather than as a mixed one.
        (directory / "meta.json").unlink(missing_ok=True)
        os.replace(all_path, directory / "train.bin")
        os.replace(work / "val.bin", directory / "val.bin")
        os.replace(work / "meta.json", directory / "meta.json")
    except BaseException:
        if created:
            shutil.rmtree(directory, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if corpus.replaced_bytes:
        warnings.warn(
            f"replaced {corpus.replaced_bytes} bytes that are not UTF-8 with U+FFFD (run with "
            "--strict_utf8 true to refuse them instead).",
            stacklevel=2,
        )
    return directory


# ----------------------------------------------------------------------------- command line
