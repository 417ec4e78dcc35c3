"""Corpus sources: where the training text comes from.

`open_corpus(data_cfg)` turns the `data` config field into a `Corpus`: a description, a
content fingerprint and a way to stream its documents. Sources:

- a text file, a directory (every file below it, recursively, hidden ones left out) or a
  glob (`'books/*.txt'`): each file is one document;
- `stdlib`: the `.py` files of the running Python's standard library (tests and
  site-packages left out), in sorted path order, up to `stdlib_max_mb` megabytes
  (10**6 bytes). Always present, so the demo and the tests never need a network;
- `shakespeare`: Tiny Shakespeare. A local copy named by the config field
  `shakespeare_path` or the environment variable `MYGPT2_SHAKESPEARE` wins; otherwise it is
  downloaded once from Karpathy's char-rnn repository into `<cache_dir>/downloads/`, with a
  progress bar and a SHA-256 check;
- `hf:NAME[:CONFIG]`: a Hugging Face dataset read with `datasets.load_dataset(NAME, CONFIG,
  split="train", streaming=True)`, one document per row's `text` column. NAME is a Hub id
  (`hf:roneneldan/TinyStories`) or a local directory of JSON/CSV/Parquet files
  (`hf:./my_dataset`). Needs the `[hf]` extra.

Design choices:
- Documents are streamed as pieces of text (files are read 1 MiB at a time), so no source
  ever has to fit in memory; `mygpt2.prepare` joins documents with `<|endoftext|>`.
- Bytes that are not UTF-8 are replaced with U+FFFD and counted (`Corpus.replaced_bytes`);
  with `strict_utf8 = true` they are refused instead, naming the file and byte offset.
- Files containing NUL bytes are binary: inside a directory or glob they are skipped and
  listed in `Corpus.warnings`; named directly they are refused.
- The fingerprint is cheap (paths, sizes and modification times, or the dataset name), so
  deciding whether prepared token files are still current never reads the corpus itself.
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import os
import sys
import sysconfig
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mygpt2.config import DataConfig
from mygpt2.errors import MyGPT2Error
from mygpt2.fileio import user_cache_dir

SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
SHAKESPEARE_ENV = "MYGPT2_SHAKESPEARE"

READ_BYTES = 1 << 20  # files are decoded this many bytes at a time
STDLIB_SKIP = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


@dataclass
class Corpus:
    """A streamable text source with a description and a cheap content fingerprint."""

    identity: str  # what the user asked for, resolved (an absolute path, "stdlib", ...)
    description: str  # one line for people: what it is and how big
    fingerprint: str  # changes when the content may have changed
    total_bytes: int | None  # for the progress bar; None when unknown (streamed datasets)
    read_documents: Callable[[Corpus], Iterator[Iterator[str]]]
    warnings: list[str] = field(default_factory=list)
    replaced_bytes: int = 0  # non-UTF-8 bytes replaced with U+FFFD so far

    def documents(self) -> Iterator[Iterator[str]]:
        """Each document as an iterator of text pieces; consume one before the next."""
        return self.read_documents(self)


def open_corpus(data_cfg: DataConfig) -> Corpus:
    """Resolve the `data` field into a Corpus, or say why it cannot be used."""
    data = data_cfg.data.strip()
    if not data:
        raise MyGPT2Error(
            "data is empty: give a file, a directory, a glob, stdlib, shakespeare "
            "or hf:NAME[:CONFIG]."
        )
    if data == "stdlib":
        return _stdlib_corpus(data_cfg)
    if data == "shakespeare":
        return _shakespeare_corpus(data_cfg)
    if data.startswith("hf:"):
        return _hf_corpus(data[3:], data_cfg)
    return _path_corpus(data, data_cfg)


# ----------------------------------------------------------------------------- files


def _fingerprint(parts: list[str]) -> str:
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()


def _stat_fingerprint(paths: list[Path], extra: str = "") -> str:
    parts = [extra]
    for p in paths:
        st = p.stat()
        parts.append(f"{p}\t{st.st_size}\t{st.st_mtime_ns}")
    return _fingerprint(parts)


def _is_binary(path: Path) -> bool:
    """NUL bytes in the first 8 KiB: how git and grep tell binary files from text."""
    with open(path, "rb") as fh:
        return b"\0" in fh.read(8192)


def _count_and_replace(err: UnicodeError) -> tuple[str, int]:
    # Codec error handlers are global, so the count goes to the corpus being read through
    # a module-level slot set by _read_text_file (reading is single-threaded).
    _replaced[0] += err.end - err.start  # type: ignore[attr-defined]
    return "\ufffd", err.end  # type: ignore[attr-defined]


_replaced = [0]
codecs.register_error("mygpt2-count-replace", _count_and_replace)


def _read_text_file(path: Path, corpus: Corpus, strict: bool) -> Iterator[str]:
    """Decode a file incrementally (a UTF-8 sequence may straddle two reads)."""
    errors = "strict" if strict else "mygpt2-count-replace"
    decoder = codecs.getincrementaldecoder("utf-8")(errors=errors)
    offset = 0
    with open(path, "rb") as fh:
        while True:
            raw = fh.read(READ_BYTES)
            before = _replaced[0]
            try:
                text = decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as e:
                raise MyGPT2Error(
                    f"'{path}' is not valid UTF-8 (byte offset {offset + e.start}). Fix the "
                    "file, or run with --strict_utf8 false to replace bad bytes with U+FFFD."
                ) from None
            corpus.replaced_bytes += _replaced[0] - before
            offset += len(raw)
            if text:
                yield text
            if not raw:
                return


def _files_corpus(
    identity: str,
    description: str,
    paths: list[Path],
    data_cfg: DataConfig,
    fingerprint_extra: str = "",
) -> Corpus:
    strict = data_cfg.strict_utf8

    def read(corpus: Corpus) -> Iterator[Iterator[str]]:
        for p in paths:
            yield _read_text_file(p, corpus, strict)

    total = sum(p.stat().st_size for p in paths)
    count = f"{len(paths)} file" + ("" if len(paths) == 1 else "s")
    return Corpus(
        identity=identity,
        description=f"{description} ({count}, {total / 1e6:.2f} MB)",
        fingerprint=_stat_fingerprint(paths, fingerprint_extra),
        total_bytes=total,
        read_documents=read,
    )


def _path_corpus(data: str, data_cfg: DataConfig) -> Corpus:
    path = Path(data).expanduser()
    if path.is_file():
        if _is_binary(path):
            raise MyGPT2Error(f"'{path}' looks binary (it contains NUL bytes), not text.")
        resolved = path.resolve()
        return _files_corpus(f"file:{resolved}", f"file {resolved}", [resolved], data_cfg)
    if path.is_dir():
        root = path.resolve()
        candidates = sorted(
            p
            for p in root.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )
        kind, identity, shown = "directory", f"dir:{root}", f"directory {root}"
    elif glob.has_magic(data):
        candidates = sorted(
            Path(p).resolve() for p in glob.glob(os.path.expanduser(data), recursive=True)
        )
        candidates = [p for p in candidates if p.is_file()]
        kind, identity, shown = "glob", f"glob:{os.path.abspath(data)}", f"glob {data}"
        if not candidates:
            raise MyGPT2Error(f"the glob '{data}' matches no files.")
    else:
        raise MyGPT2Error(
            f"data '{data}' is not a file, a directory or a glob that matches files, nor one of "
            "stdlib, shakespeare, hf:NAME[:CONFIG]."
        )
    is_binary = {p: _is_binary(p) for p in candidates}
    binary = [p for p in candidates if is_binary[p]]
    texts = [p for p in candidates if not is_binary[p]]
    if not texts:
        raise MyGPT2Error(
            f"the {kind} '{data}' holds no text files"
            + (f" ({len(binary)} binary files skipped)." if binary else ".")
        )
    corpus = _files_corpus(identity, shown, texts, data_cfg)
    if binary:
        listed = ", ".join(str(p) for p in binary[:10])
        more = f" and {len(binary) - 10} more" if len(binary) > 10 else ""
        corpus.warnings.append(f"skipped {len(binary)} binary files: {listed}{more}")
    return corpus


# ----------------------------------------------------------------------------- stdlib


def stdlib_files(max_mb: float) -> list[Path]:
    """The stdlib's .py files in sorted path order, stopping before the size cap is passed."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        # pruning in place keeps os.walk out of skipped trees; sorting is for determinism
        dirnames[:] = sorted(d for d in dirnames if d not in STDLIB_SKIP and not d.startswith("."))
        rel = Path(dirpath).relative_to(root)
        found += [rel / f for f in filenames if f.endswith(".py")]
    found.sort(key=lambda p: p.as_posix())
    cap = int(max_mb * 1e6)
    chosen, total = [], 0
    for rel in found:
        size = (root / rel).stat().st_size
        if total + size > cap:
            break
        chosen.append(root / rel)
        total += size
    return chosen


def _stdlib_corpus(data_cfg: DataConfig) -> Corpus:
    paths = stdlib_files(data_cfg.stdlib_max_mb)
    if not paths:
        raise MyGPT2Error(
            f"stdlib_max_mb = {data_cfg.stdlib_max_mb} is smaller than the first stdlib file; "
            "raise it."
        )
    version = ".".join(map(str, sys.version_info[:3]))
    return _files_corpus(
        "stdlib",
        f"Python {version} standard library .py files, cap {data_cfg.stdlib_max_mb:g} MB",
        paths,
        data_cfg,
        fingerprint_extra=f"stdlib {version} {data_cfg.stdlib_max_mb}",
    )


# ----------------------------------------------------------------------------- shakespeare


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(READ_BYTES), b""):
            h.update(block)
    return h.hexdigest()


def download_shakespeare(dest: Path) -> Path:
    """Download Tiny Shakespeare to `dest` with a progress bar and a SHA-256 check."""
    from tqdm import tqdm

    how = (
        f"To use a local copy instead, run with --shakespeare_path FILE or set {SHAKESPEARE_ENV}"
        f"=FILE (the file is {SHAKESPEARE_URL})."
    )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(SHAKESPEARE_URL, timeout=30) as resp, open(tmp, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc="tinyshakespeare") as bar:
                for block in iter(lambda: resp.read(1 << 16), b""):
                    out.write(block)
                    bar.update(len(block))
    except (urllib.error.URLError, OSError) as e:
        tmp.unlink(missing_ok=True)
        raise MyGPT2Error(f"could not download Tiny Shakespeare ({e}). {how}") from None
    digest = _sha256_file(tmp)
    if digest != SHAKESPEARE_SHA256:
        tmp.unlink(missing_ok=True)
        raise MyGPT2Error(
            f"the downloaded Tiny Shakespeare has SHA-256 {digest}, expected "
            f"{SHAKESPEARE_SHA256}: the download was altered or cut short. {how}"
        )
    os.replace(tmp, dest)  # only a verified file ever gets the final name
    return dest


def _shakespeare_corpus(data_cfg: DataConfig) -> Corpus:
    local = data_cfg.shakespeare_path or os.environ.get(SHAKESPEARE_ENV, "")
    if local:
        path = Path(local).expanduser()
        if not path.is_file():
            origin = "shakespeare_path" if data_cfg.shakespeare_path else SHAKESPEARE_ENV
            raise MyGPT2Error(f"{origin} names '{path}', which is not a file.")
        return _files_corpus(
            "shakespeare", f"Tiny Shakespeare from {path.resolve()}", [path.resolve()], data_cfg
        )
    cached = user_cache_dir(data_cfg.cache_dir) / "downloads" / "tinyshakespeare.txt"
    size = 1115394  # known size, so the fingerprint and progress bar need no download

    def read(corpus: Corpus) -> Iterator[Iterator[str]]:
        if not cached.is_file():
            download_shakespeare(cached)
        yield _read_text_file(cached, corpus, data_cfg.strict_utf8)

    return Corpus(
        identity="shakespeare",
        description=f"Tiny Shakespeare ({SHAKESPEARE_URL}, {size / 1e6:.2f} MB)",
        fingerprint=SHAKESPEARE_SHA256,  # the content is pinned by its hash
        total_bytes=size,
        read_documents=read,
    )


# ----------------------------------------------------------------------------- Hugging Face


def _hf_corpus(spec: str, data_cfg: DataConfig) -> Corpus:
    name, _, config = spec.partition(":")
    if not name:
        raise MyGPT2Error("hf: needs a dataset name: hf:NAME or hf:NAME:CONFIG.")
    local = Path(name).expanduser()
    if local.is_dir():
        files = sorted(
            p.resolve()
            for p in local.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(local).parts)
        )
        identity = f"hf:{local.resolve()}:{config}"
        fingerprint = _stat_fingerprint(files, identity)
        shown = f"Hugging Face dataset in {local.resolve()}"
    else:
        # A Hub dataset is named, not stat-ed: delete the prepared directory to refresh it.
        identity = f"hf:{name}:{config}"
        fingerprint = _fingerprint([identity])
        shown = f"Hugging Face dataset {name}"
    shown += f" (config {config})" if config else ""

    def read(corpus: Corpus) -> Iterator[Iterator[str]]:
        try:
            import datasets
        except ImportError:
            raise MyGPT2Error(
                "hf: sources need the datasets package: pip install 'mygpt2[hf]'."
            ) from None
        try:
            stream = datasets.load_dataset(
                str(local.resolve()) if local.is_dir() else name,
                config or None,
                split="train",
                streaming=True,
            )
        except Exception as e:  # datasets raises many types; all mean "cannot load this"
            raise MyGPT2Error(f"could not load Hugging Face dataset '{spec}': {e}") from None
        for row in stream:
            if "text" not in row:
                raise MyGPT2Error(
                    f"Hugging Face dataset '{spec}' has no 'text' column; its columns are "
                    f"{', '.join(row)}."
                )
            yield iter((row["text"] or "",))

    # total_bytes None: row text sizes are unknown until read (files hold JSON/Parquet framing)
    return Corpus(identity, shown, fingerprint, None, read)
