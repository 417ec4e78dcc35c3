"""prepare / open_prepared / ensure_prepared: round trips, reuse, and every bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mygpt2 import prepare as prepare_mod
from mygpt2.cli import run
from mygpt2.commands.args import load_config
from mygpt2.config import Config
from mygpt2.corpus import open_corpus
from mygpt2.data import construct_data_loaders
from mygpt2.errors import MyGPT2Error
from mygpt2.prepare import (
    ensure_prepared,
    open_prepared,
    prepare,
    prepared_dir,
    token_dtype,
)
from mygpt2.tokenizer import EOT, RegexTokenizer, load_tokenizer

TEXT = (
    "The quick brown fox jumps over the lazy dog.\n"
    "Pack my box with five dozen liquor jugs!\n"
    "How vexingly quick daft zebras jump; 12345 67890.\n"
) * 20


@pytest.fixture(scope="module")
def gpt2(gpt2_tiktoken_path: Path) -> RegexTokenizer:
    cfg = Config()
    cfg.tokenizer.use_tiktoken = True
    cfg.tokenizer.tiktoken_file = str(gpt2_tiktoken_path)
    return load_tokenizer(cfg.tokenizer)


@pytest.fixture(scope="module")
def small_tok() -> RegexTokenizer:
    return RegexTokenizer().train(TEXT, 300)


def make_cfg(tmp_path: Path, data: Path | str, **data_fields) -> Config:
    cfg = Config()
    cfg.model.T = 16
    cfg.data.data = str(data)
    cfg.data.cache_dir = str(tmp_path / "cache")
    for key, value in data_fields.items():
        setattr(cfg.data, key, value)
    return cfg


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def tokens_of(directory: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
    dtype = np.dtype(meta["dtype"])
    train = np.fromfile(directory / "train.bin", dtype=dtype)
    val = np.fromfile(directory / "val.bin", dtype=dtype)
    return train, val, meta


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.mark.parametrize("which", ["gpt2", "small_tok"])
def test_round_trip_joins_documents_with_endoftext(tmp_path, request, which) -> None:
    tok = request.getfixturevalue(which)
    docs = ["First document.\n" * 30, "Second, with ünïcödé and emoji 🙂\n" * 20, "", "Last"]
    for i, doc in enumerate(docs):
        write(tmp_path / "corpus" / f"{i}.txt", doc)
    cfg = make_cfg(tmp_path, tmp_path / "corpus")
    directory = prepare(cfg, tok, progress=False)
    train, val, meta = tokens_of(directory)
    expected = EOT.join(d for d in docs if d)  # empty documents are dropped
    assert tok.decode([*train.tolist(), *val.tolist()]) == expected
    n = len(train) + len(val)
    assert len(train) == int(n * 0.9) and meta["train_tokens"] == len(train)
    assert meta["val_tokens"] == len(val) and meta["version"] == prepare_mod.FORMAT_VERSION
    assert meta["tokenizer"] == {
        "name": tok.name,
        "fingerprint": tok.fingerprint(),
        "vocab_size": tok.vocab_size,
    }
    assert meta["dtype"] == "uint16" and meta["split"] == 0.9
    assert meta["newline_id"] == tok.encode_ordinary("\n")[0]
    assert str((tmp_path / "corpus").resolve()) in meta["source"]["description"]
    assert directory.parent == tmp_path / "cache"
    assert [p.name for p in directory.iterdir()] != [] and not any(
        p.name.startswith(".tmp") for p in directory.iterdir()
    )


@pytest.mark.parametrize(("split", "n_train"), [(0.9, 900), (0.5, 500), (0.7, 700), (0.999, 999)])
def test_split_boundary_by_hand(tmp_path, split, n_train) -> None:
    # An untrained tokenizer has no merges: one token per byte, plus the end-of-text id 256
    # between the two documents. So the stream is known by hand: 500 + 1 + 500 = 1001 tokens,
    # and train.bin holds the first int(1001 * split) of them -- 900.9 -> 900, 500.5 -> 500,
    # 700.7 -> 700, 999.999 -> 999 -- val.bin the rest, in order.
    tok = RegexTokenizer()
    first, second = "abcdefghij" * 50, "0123 56789" * 50
    write(tmp_path / "corpus" / "1.txt", first)
    write(tmp_path / "corpus" / "2.txt", second)
    stream = [*first.encode(), 256, *second.encode()]
    assert len(stream) == 1001
    cfg = make_cfg(tmp_path, tmp_path / "corpus", split=split)
    train, val, meta = tokens_of(prepare(cfg, tok, progress=False))
    assert len(train) == meta["train_tokens"] == n_train
    assert len(val) == meta["val_tokens"] == 1001 - n_train
    assert train.tolist() == stream[:n_train] and val.tolist() == stream[n_train:]


def test_chunked_encoding_equals_whole_document(tmp_path, gpt2, shakespeare_path, monkeypatch):
    text = shakespeare_path.read_text(encoding="utf-8")
    monkeypatch.setattr(prepare_mod, "CHUNK_CHARS", 997)  # hundreds of cuts
    monkeypatch.setenv("MYGPT2_SHAKESPEARE", str(shakespeare_path))
    cfg = make_cfg(tmp_path, "shakespeare")
    train, val, meta = tokens_of(prepare(cfg, gpt2, progress=False))
    assert [*train.tolist(), *val.tolist()] == gpt2.encode_ordinary(text)
    assert meta["source"]["identity"] == "shakespeare"


def test_cut_point_is_safe() -> None:
    text = "abc\n\n  def\nghi\n jkl"
    assert prepare_mod._cut_point(text, 1, len(text)) == text.index("ghi")
    assert prepare_mod._cut_point("no newline here", 1, 15) == len("no newline")
    assert prepare_mod._cut_point("x\n\n\ty\r\nw", 1, 8) == -1


@pytest.mark.parametrize("which", ["gpt2", "small_tok"])  # GPT-2 and GPT-4 split patterns
def test_cuts_never_change_tokens(tmp_path, request, monkeypatch, which) -> None:
    tok = request.getfixturevalue(which)
    pieces = ["word", " ", "  ", "\n", "\n\n", " \n", "\r\n", "\t", "?", "!\n", "42", "é", "'s"]
    rng = np.random.default_rng(0)
    text = "".join(pieces[i] for i in rng.integers(0, len(pieces), 20000))
    write(tmp_path / "t.txt", text)
    monkeypatch.setattr(prepare_mod, "CHUNK_CHARS", 50)
    cfg = make_cfg(tmp_path, tmp_path / "t.txt")
    cuts = [len(t) for _, t in prepare_mod._chunks(open_corpus(cfg.data), 50)]
    assert len(cuts) > 100
    train, val, _ = tokens_of(prepare(cfg, tok, progress=False))
    assert [*train.tolist(), *val.tolist()] == tok.encode_ordinary(text)


def test_a_custom_pattern_encodes_whole_documents(tmp_path, monkeypatch) -> None:
    """The safe cut points hold for GPT-2's and GPT-4's patterns only: with a custom one a
    pre-token can span them ('日本 ' before 'alpha' under `\\S+\\s*`), so its documents are
    encoded whole and the tokens equal whole-text encoding."""
    words = ["alpha", "beta", "日本", "🤖", "1234", "x\n"]
    rng = np.random.default_rng(1)
    text = " ".join(words[i] for i in rng.integers(0, len(words), 4000))
    tok = RegexTokenizer(pattern=r"\S+\s*|\s+").train(text, 300)
    write(tmp_path / "t.txt", text)
    monkeypatch.setattr(prepare_mod, "CHUNK_CHARS", 50)  # a built-in pattern would be cut
    cfg = make_cfg(tmp_path, tmp_path / "t.txt")
    train, val, _ = tokens_of(prepare(cfg, tok, progress=False))
    assert [*train.tolist(), *val.tolist()] == tok.encode_ordinary(text)


def test_dtype_choice(tmp_path) -> None:
    assert token_dtype(50257) == np.uint16 and token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32
    big = RegexTokenizer(special_tokens={EOT: 70000})  # ids up to 70000 need 32 bits
    write(tmp_path / "a.txt", TEXT)
    cfg = make_cfg(tmp_path, tmp_path / "a.txt")
    train, val, meta = tokens_of(prepare(cfg, big, progress=False))
    assert meta["dtype"] == "uint32" and train.dtype == np.uint32
    assert big.decode([*train.tolist(), *val.tolist()]) == TEXT


def test_reuse_when_unchanged_and_redo_when_changed(tmp_path, gpt2, monkeypatch) -> None:
    src = write(tmp_path / "a.txt", TEXT)
    cfg = make_cfg(tmp_path, src)
    directory = prepare(cfg, gpt2, progress=False)
    stamp = (directory / "train.bin").stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("re-tokenized an unchanged corpus")

    with monkeypatch.context() as m:
        m.setattr(gpt2, "encode_ordinary_batch", fail)
        assert prepare(cfg, gpt2, progress=False) == directory
        train, val, _ = ensure_prepared(cfg, gpt2, progress=False)
    assert (directory / "train.bin").stat().st_mtime_ns == stamp
    assert len(train) + len(val) == len(gpt2.encode_ordinary(TEXT))
    write(src, TEXT + "one more line\n")
    train, val, _ = ensure_prepared(cfg, gpt2, progress=False)
    assert gpt2.decode([*train.tolist(), *val.tolist()]) == TEXT + "one more line\n"
    cfg.data.split = 0.8
    _, val2, meta = ensure_prepared(cfg, gpt2, progress=False)
    assert meta["split"] == 0.8 and len(val2) > len(val)
    assert prepared_dir(cfg, gpt2) == directory  # same source and tokenizer, same place


def test_tokenizers_get_their_own_dirs_and_mismatch_is_refused(tmp_path, gpt2, small_tok):
    src = write(tmp_path / "a.txt", TEXT)
    cfg = make_cfg(tmp_path, src)
    assert prepared_dir(cfg, gpt2) != prepared_dir(cfg, small_tok)
    cfg.data.data_dir = str(tmp_path / "mine")
    ensure_prepared(cfg, gpt2, progress=False)
    before = snapshot(tmp_path / "mine")
    for call in (open_prepared, ensure_prepared):
        with pytest.raises(MyGPT2Error) as err:
            call(cfg, small_tok)
        message = str(err.value)
        assert gpt2.name in message and small_tok.name in message
    assert snapshot(tmp_path / "mine") == before
    other = write(tmp_path / "b.txt", TEXT.upper())
    cfg.data.data = str(other)
    with pytest.raises(MyGPT2Error, match="Pass the same --data"):
        ensure_prepared(cfg, gpt2, progress=False)
    assert snapshot(tmp_path / "mine") == before


def test_bad_inputs_leave_prepared_files_untouched(tmp_path, gpt2) -> None:
    good = write(tmp_path / "good.txt", TEXT)
    cfg = make_cfg(tmp_path, good, data_dir=str(tmp_path / "prepared"))
    directory = prepare(cfg, gpt2, progress=False)
    before = snapshot(directory)
    empty = write(tmp_path / "empty.txt", "")
    short = write(tmp_path / "short.txt", "just a few words")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes(TEXT.encode() + b"caf\xe9\n")
    bad = [
        (dict(data=str(empty)), "the corpus is empty"),
        (dict(data=str(short)), r"val split has 1 token\(s\) \(split = 0.9, 4 tokens in all\)"),
        (dict(data=str(latin1), strict_utf8=True), r"not valid UTF-8 \(byte offset"),
        (dict(split=0.999), r"val split has 1 token\(s\)"),
        (dict(split=1.0), r"val split has 0 token\(s\)"),
        (dict(split=0.001), "train split has"),
    ]
    for i, (fields, message) in enumerate(bad):
        # another corpus goes to a data_dir of its own: this one's is refused to it (below)
        target = tmp_path / f"fresh-{i}" if "data" in fields else directory
        c = make_cfg(tmp_path, good, data_dir=str(target))
        for key, value in fields.items():
            setattr(c.data, key, value)
        with pytest.raises(MyGPT2Error, match=message):
            prepare(c, gpt2, progress=False, force=True)
        assert snapshot(directory) == before, fields
        assert target == directory or not target.exists(), fields
    # a data_dir holding another corpus's tokens is never replaced silently, by `prepare` as
    # by training (it was, by `mygpt2 prepare --data_dir`)
    c = make_cfg(tmp_path, latin1, data_dir=str(directory))
    with pytest.raises(MyGPT2Error, match=r"holds tokens of file .*good\.txt.*another --data_dir"):
        prepare(c, gpt2, progress=False)
    assert snapshot(directory) == before
    # an empty source directory is never created
    fresh = make_cfg(tmp_path, empty)
    with pytest.raises(MyGPT2Error, match="empty"):
        prepare(fresh, gpt2, progress=False)
    assert not prepared_dir(fresh, gpt2).exists()
    for flag in ("0", "1", "-0.5", "1.5"):
        with pytest.raises(MyGPT2Error, match="split must be strictly between 0 and 1"):
            load_config(["--split", flag])


def test_replaced_bytes_and_skipped_binaries_are_reported(tmp_path, gpt2, capsys) -> None:
    write(tmp_path / "docs" / "a.txt", TEXT)
    (tmp_path / "docs" / "b.txt").write_bytes(b"caf\xe9 " + TEXT.encode())
    (tmp_path / "docs" / "c.bin").write_bytes(b"\0\1\2\3")
    cfg = make_cfg(tmp_path, tmp_path / "docs")
    with pytest.warns(UserWarning) as caught:
        train, _, meta = tokens_of(prepare(cfg, gpt2, progress=False))
    assert meta["replaced_bytes"] == 1
    assert "c.bin" in meta["warnings"][0]
    said = " | ".join(str(w.message) for w in caught)
    assert "replaced 1 bytes" in said and "skipped 1 binary files" in said
    assert "caf\ufffd " in gpt2.decode(train.tolist())


def test_damaged_files_are_refused_then_repaired(tmp_path, gpt2) -> None:
    src = write(tmp_path / "a.txt", TEXT)
    cfg = make_cfg(tmp_path, src)
    directory = prepare(cfg, gpt2, progress=False)
    train_bin, meta_path = directory / "train.bin", directory / "meta.json"
    good_meta = meta_path.read_text(encoding="utf-8")

    os.truncate(train_bin, train_bin.stat().st_size - 2)
    with pytest.raises(MyGPT2Error, match="truncated"):
        open_prepared(cfg, gpt2)
    os.truncate(train_bin, train_bin.stat().st_size + 1)  # odd size: not whole uint16s
    with pytest.raises(MyGPT2Error, match=r"bytes, but meta\.json says"):
        open_prepared(cfg, gpt2)
    ensure_prepared(cfg, gpt2, progress=False)  # a damaged directory is prepared again
    open_prepared(cfg, gpt2)

    meta = json.loads(good_meta)
    meta["version"] = 99
    meta_path.write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(MyGPT2Error, match="format version 99; this mygpt2 reads version 1"):
        open_prepared(cfg, gpt2)
    meta_path.write_text("{not json", encoding="utf-8")
    with pytest.raises(MyGPT2Error, match="not valid JSON"):
        open_prepared(cfg, gpt2)
    meta_path.unlink()
    with pytest.raises(MyGPT2Error, match=r"has no meta\.json"):
        open_prepared(cfg, gpt2)
    train, val, _ = ensure_prepared(cfg, gpt2, progress=False)
    assert gpt2.decode([*train.tolist(), *val.tolist()]) == TEXT
    cfg.model.T = 1024  # existing files, but too few tokens for this context length
    with pytest.raises(MyGPT2Error, match="T \\+ 1 = 1025"):
        construct_data_loaders(cfg, train, val, pad_id=0)


def test_memmaps_are_read_only_views(tmp_path, gpt2) -> None:
    cfg = make_cfg(tmp_path, write(tmp_path / "a.txt", TEXT))
    train, val, meta = ensure_prepared(cfg, gpt2, progress=False)
    assert isinstance(train, np.memmap) and train.dtype == np.uint16 and not train.flags.writeable
    assert len(train) == meta["train_tokens"] and len(val) == meta["val_tokens"]


def test_command_line(tmp_path, gpt2_tiktoken_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MYGPT2_CACHE", str(tmp_path / "user-cache"))
    src = write(tmp_path / "a.txt", TEXT)
    flags = ["--use_tiktoken", "--tiktoken_file", str(gpt2_tiktoken_path)]
    assert run("prepare", [str(src), *flags]) == 0
    out = capsys.readouterr().out
    assert "train and" in out and "user-cache" in out
    assert len(list((tmp_path / "user-cache").iterdir())) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "user-cache"]  # not the CWD
    assert run("prepare", ["--data", str(tmp_path / "missing.txt"), *flags]) == 2
    assert "is not a file" in capsys.readouterr().err
    assert run("prepare", ["--help"]) == 0
    assert "--data" in capsys.readouterr().out


def test_progress_bar_and_root_script(tmp_path, gpt2_tiktoken_path, capsys) -> None:
    tok_cfg = make_cfg(tmp_path, write(tmp_path / "a.txt", TEXT))
    tok_cfg.tokenizer.use_tiktoken, tok_cfg.tokenizer.tiktoken_file = True, str(gpt2_tiktoken_path)
    prepare(tok_cfg, load_tokenizer(tok_cfg.tokenizer), progress=True)
    err = capsys.readouterr().err
    assert "preparing file" in err and "tokenizing" in err and "B/s" in err
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, str(root / "import_data.py"), "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0 and "usage: mygpt2 prepare" in done.stdout


def test_strict_utf8_does_not_reuse_files_made_with_replacements(tmp_path, gpt2) -> None:
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes(TEXT.encode() + b"caf\xe9\n")
    ensure_prepared(make_cfg(tmp_path, latin1), gpt2, progress=False)  # replaces the byte
    with pytest.raises(MyGPT2Error, match="not valid UTF-8"):
        ensure_prepared(make_cfg(tmp_path, latin1, strict_utf8=True), gpt2, progress=False)
