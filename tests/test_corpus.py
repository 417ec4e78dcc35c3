"""Corpus sources: files, directories, globs, stdlib, shakespeare (offline) and hf: (local)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import sysconfig
import urllib.error
from pathlib import Path
from typing import ClassVar

import pytest

from mygpt2 import corpus as corpus_mod
from mygpt2.config import DataConfig
from mygpt2.corpus import SHAKESPEARE_ENV, SHAKESPEARE_SHA256, open_corpus, stdlib_files
from mygpt2.errors import MyGPT2Error


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.delenv(SHAKESPEARE_ENV, raising=False)


def read_all(c) -> list[str]:
    return ["".join(doc) for doc in c.documents()]


def cfg_for(data: str, tmp_path: Path, **kw) -> DataConfig:
    return DataConfig(data=str(data), cache_dir=str(tmp_path / "cache"), **kw)


def test_single_file(tmp_path) -> None:
    p = tmp_path / "a.txt"
    p.write_text("hello\nworld\n", encoding="utf-8")
    c = open_corpus(cfg_for(p, tmp_path))
    assert read_all(c) == ["hello\nworld\n"]
    assert c.total_bytes == 12 and str(p.resolve()) in c.description
    before = c.fingerprint
    assert open_corpus(cfg_for(p, tmp_path)).fingerprint == before
    p.write_text("hello\nworld!\n", encoding="utf-8")
    assert open_corpus(cfg_for(p, tmp_path)).fingerprint != before


def test_directory_sorted_hidden_and_binary_skipped(tmp_path) -> None:
    d = tmp_path / "docs"
    (d / "sub").mkdir(parents=True)
    (d / ".git").mkdir()
    (d / "b.txt").write_text("bee", encoding="utf-8")
    (d / "a.txt").write_text("ay", encoding="utf-8")
    (d / "sub" / "c.md").write_text("sea", encoding="utf-8")
    (d / ".git" / "HEAD").write_text("hidden", encoding="utf-8")
    (d / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0")
    c = open_corpus(cfg_for(d, tmp_path))
    assert read_all(c) == ["ay", "bee", "sea"]
    assert len(c.warnings) == 1 and "logo.png" in c.warnings[0] and "binary" in c.warnings[0]


def test_glob_and_bad_paths(tmp_path) -> None:
    for name in ("x1.txt", "x2.txt", "y.txt"):
        (tmp_path / name).write_text(name, encoding="utf-8")
    c = open_corpus(cfg_for(tmp_path / "x*.txt", tmp_path))
    assert read_all(c) == ["x1.txt", "x2.txt"]
    with pytest.raises(MyGPT2Error, match="matches no files"):
        open_corpus(cfg_for(tmp_path / "z*.txt", tmp_path))
    with pytest.raises(MyGPT2Error, match="not a file, a directory or a glob"):
        open_corpus(cfg_for(tmp_path / "missing.txt", tmp_path))
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "blob").write_bytes(b"\0\1\2")
    with pytest.raises(MyGPT2Error, match="no text files"):
        open_corpus(cfg_for(tmp_path / "only", tmp_path))
    with pytest.raises(MyGPT2Error, match="binary"):
        open_corpus(cfg_for(tmp_path / "only" / "blob", tmp_path))


def test_non_utf8_replaced_and_counted_or_refused(tmp_path, monkeypatch) -> None:
    p = tmp_path / "latin1.txt"
    p.write_bytes("café ".encode() * 3 + b"caf\xe9 \xff\xfe end")
    c = open_corpus(cfg_for(p, tmp_path))
    assert read_all(c) == ["café café café caf\ufffd \ufffd\ufffd end"]
    assert c.replaced_bytes == 3
    strict = open_corpus(cfg_for(p, tmp_path, strict_utf8=True))
    with pytest.raises(MyGPT2Error, match=r"not valid UTF-8 \(byte offset 21\).*strict_utf8"):
        read_all(strict)
    # a multi-byte character split across two reads is still decoded whole
    monkeypatch.setattr(corpus_mod, "READ_BYTES", 3)
    c = open_corpus(cfg_for(p, tmp_path))
    assert read_all(c) == ["café café café caf\ufffd \ufffd\ufffd end"]
    assert c.replaced_bytes == 3


def test_stdlib_is_deterministic_capped_and_skips_tests(tmp_path) -> None:
    files = stdlib_files(1.0)
    assert files == stdlib_files(1.0)
    root = Path(sysconfig.get_paths()["stdlib"])
    rel = [f.relative_to(root).as_posix() for f in files]
    assert rel == sorted(rel) and all(r.endswith(".py") for r in rel)
    assert not any(part in ("test", "tests", "site-packages") for r in rel for part in r.split("/"))
    assert 0.9e6 < sum(f.stat().st_size for f in files) <= 1e6
    bigger = stdlib_files(2.0)
    assert bigger[: len(files)] == files  # a larger cap extends the same order
    c = open_corpus(cfg_for("stdlib", tmp_path, stdlib_max_mb=0.2))
    docs = read_all(c)
    assert len(docs) == len(stdlib_files(0.2)) and sum(map(len, docs)) <= 0.2e6
    assert c.fingerprint == open_corpus(cfg_for("stdlib", tmp_path, stdlib_max_mb=0.2)).fingerprint
    assert c.fingerprint != open_corpus(cfg_for("stdlib", tmp_path, stdlib_max_mb=0.3)).fingerprint
    with pytest.raises(MyGPT2Error, match="stdlib_max_mb"):
        open_corpus(cfg_for("stdlib", tmp_path, stdlib_max_mb=1e-6))


def test_shakespeare_hash_matches_the_shared_copy(shakespeare_path) -> None:
    assert hashlib.sha256(shakespeare_path.read_bytes()).hexdigest() == SHAKESPEARE_SHA256


def test_shakespeare_from_env_and_from_config(tmp_path, monkeypatch, shakespeare_path) -> None:
    text = shakespeare_path.read_text(encoding="utf-8")
    monkeypatch.setenv(SHAKESPEARE_ENV, str(shakespeare_path))
    assert read_all(open_corpus(cfg_for("shakespeare", tmp_path))) == [text]
    monkeypatch.delenv(SHAKESPEARE_ENV)
    c = open_corpus(cfg_for("shakespeare", tmp_path, shakespeare_path=str(shakespeare_path)))
    assert read_all(c) == [text]
    with pytest.raises(MyGPT2Error, match="shakespeare_path names"):
        open_corpus(cfg_for("shakespeare", tmp_path, shakespeare_path=str(tmp_path / "nope")))
    assert not (tmp_path / "cache").exists()  # nothing downloaded


def test_shakespeare_offline_says_how_to_supply_a_file(tmp_path, monkeypatch) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(corpus_mod.urllib.request, "urlopen", offline)
    c = open_corpus(cfg_for("shakespeare", tmp_path))
    assert c.fingerprint == SHAKESPEARE_SHA256  # known without downloading
    with pytest.raises(MyGPT2Error) as err:
        read_all(c)
    assert "--shakespeare_path FILE" in str(err.value) and SHAKESPEARE_ENV in str(err.value)
    assert not list((tmp_path / "cache" / "downloads").iterdir())  # no partial file left


class FakeResponse(io.BytesIO):
    headers: ClassVar[dict[str, str]] = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_shakespeare_download_is_verified_and_cached(tmp_path, monkeypatch, shakespeare_path):
    payload = shakespeare_path.read_bytes()
    calls = []

    def fake_urlopen(url, timeout):
        calls.append(url)
        return FakeResponse(payload)

    monkeypatch.setattr(corpus_mod.urllib.request, "urlopen", fake_urlopen)
    c = open_corpus(cfg_for("shakespeare", tmp_path))
    assert read_all(c) == [payload.decode("utf-8")]
    assert read_all(open_corpus(cfg_for("shakespeare", tmp_path))) == [payload.decode("utf-8")]
    assert len(calls) == 1  # the second read used the cached copy
    payload = payload[:-10]  # a cut-short download
    (tmp_path / "cache" / "downloads" / "tinyshakespeare.txt").unlink()
    with pytest.raises(MyGPT2Error, match="SHA-256"):
        read_all(open_corpus(cfg_for("shakespeare", tmp_path)))
    assert not list((tmp_path / "cache" / "downloads").iterdir())


def test_hf_local_json_and_parquet(tmp_path, monkeypatch) -> None:
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rows = [{"text": f"document {i}\n", "id": i} for i in range(5)]
    jdir = tmp_path / "jsonds"
    jdir.mkdir()
    (jdir / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    c = open_corpus(cfg_for(f"hf:{jdir}", tmp_path))
    assert read_all(c) == [r["text"] for r in rows]
    assert "Hugging Face dataset" in c.description

    import pyarrow as pa
    import pyarrow.parquet as pq

    pdir = tmp_path / "parquetds"
    pdir.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), pdir / "train.parquet")
    assert read_all(open_corpus(cfg_for(f"hf:{pdir}", tmp_path))) == [r["text"] for r in rows]

    bad = tmp_path / "badds"
    bad.mkdir()
    (bad / "train.jsonl").write_text('{"body": "x"}\n', encoding="utf-8")
    with pytest.raises(MyGPT2Error, match="no 'text' column; its columns are body"):
        read_all(open_corpus(cfg_for(f"hf:{bad}", tmp_path)))
    with pytest.raises(MyGPT2Error, match="needs a dataset name"):
        open_corpus(cfg_for("hf:", tmp_path))
    os.utime(jdir / "train.jsonl", ns=(1, 1))
    assert open_corpus(cfg_for(f"hf:{jdir}", tmp_path)).fingerprint != c.fingerprint
