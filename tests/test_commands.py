"""The command line as users run it: `mygpt2 demo` end to end on tiny settings, the root
scripts, exit codes, and the flags each command takes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mygpt2.checkpoint import load_checkpoint
from mygpt2.cli import COMMANDS, main
from mygpt2.tokenizer import RegexTokenizer

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "stdlib_max_mb": "0.3",
    "vocab_size": "300",
    "n_layers": "1",
    "n_heads": "2",
    "n_emb": "32",
    "T": "32",
    "batch_size": "2",
    "macro_batch_size": "2",
    "max_steps": "3",
    "eval_interval": "3",
    "eval_batches": "1",
    "max_new_tokens": "5",
    "num_samples": "1",
    "device": "cpu",
}


def test_demo_runs_the_whole_pipeline_with_tiny_settings(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the demo's own out_dir, out-demo/, lands here
    flags = [f"--{k}={v}" for k, v in TINY.items()]
    out = tmp_path / "out-demo"
    argv = ["demo", *flags, f"--cache_dir={tmp_path / 'cache'}"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for name in ("tokenizer.json", "checkpoint.pt", "metrics.jsonl", "loss_plot.png"):
        assert (out / name).is_file(), name
    assert "--- sample 1" in (out / "generated.txt").read_text(encoding="utf-8")
    assert "[1/3] training a 300-token BPE tokenizer on" in printed and "demo finished" in printed
    # the resolved config says which values the demo chose and which the user gave
    lines = {line.split(" = ")[0]: line for line in printed.splitlines() if " = " in line}
    assert lines["max_steps"].endswith("# flag") and lines["lr"].endswith("# demo")
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["step"] == 3 and ckpt["config"]["model"]["n_layers"] == 1
    vocab = RegexTokenizer.load(out / "tokenizer.json").vocab_size
    assert ckpt["config"]["model"]["vocab_size"] == vocab
    # run again: the tokenizer is reused, and in its own out-demo/ the demo passes --overwrite,
    # so without --resume the run starts over (the old checkpoint replaced at the first save)
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "[1/3] tokenizer: reusing" in printed and "demo finished" in printed
    lines = {line.split(" = ")[0]: line for line in printed.splitlines() if " = " in line}
    assert lines["overwrite"].endswith("# demo")
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 3
    # another out_dir holding a run is not the demo's to replace: refused before any work
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "checkpoint.pt").write_bytes((out / "checkpoint.pt").read_bytes())
    assert main([*argv, f"--out_dir={mine}"]) == 2
    err = capsys.readouterr().err
    assert f"'{mine}' already holds a run (checkpoint.pt: step 3 of 3" in err
    assert "--overwrite" in err and sorted(p.name for p in mine.iterdir()) == ["checkpoint.pt"]


@pytest.mark.parametrize(
    "script", ["run_train.py", "run_pretrained.py", "train_tokenizer.py", "import_data.py"]
)
def test_root_scripts_answer_help_and_refuse_unknown_flags(script):
    run = subprocess.run(
        [sys.executable, str(REPO / script), "--help"], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0 and "usage: mygpt2" in run.stdout, run.stderr
    assert "[default:" in run.stdout
    bad = subprocess.run(
        [sys.executable, str(REPO / script), "--no_such_flag", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "unknown flag '--no_such_flag'" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "tokenizer"])
def test_every_command_has_help(command, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: mygpt2") and "[default:" in out


def test_a_bad_flag_value_is_a_usage_error_before_any_work(tmp_path, capsys):
    assert main(["train", "--n_layers", "two", f"--out_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "'n_layers' must be int, got 'two'" in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # nothing written
    assert main(["sample", "--top_p", "0", f"--out_dir={tmp_path}"]) == 2
    assert "top_p must be in (0, 1]" in capsys.readouterr().err


def test_start_file_that_is_not_utf8_is_a_clear_error(tmp_path, capsys):
    start = tmp_path / "start.txt"
    start.write_bytes(b"caf\xe9\n")
    assert main(["sample", f"--start=FILE:{start}", f"--out_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "is not UTF-8 text (byte 3 is 0xe9)" in err and "Traceback" not in err


def test_tokenizer_show_honours_allow_special(tmp_path, shakespeare_path, capsys):
    path = tmp_path / "tok.json"
    flags = ["--data", str(shakespeare_path), "--vocab_size", "300", "--tokenizer_path", str(path)]
    assert main(["tokenizer", "train", *flags]) == 0
    tok = RegexTokenizer.load(path)
    text = "hi<|endoftext|>"
    capsys.readouterr()
    assert main(["tokenizer", "show", text, "--tokenizer_path", str(path)]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[1]) == tok.encode_ordinary(text)
    assert main(["tokenizer", "show", text, "--tokenizer_path", str(path), "--allow_special"]) == 0
    ids = json.loads(capsys.readouterr().out.splitlines()[1])
    assert ids[-1] == tok.eot_id and ids == tok.encode(text, allowed_special="all")


def test_tokenizer_train_never_overwrites_silently(tmp_path, shakespeare_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "tok.json"
    flags = ["--data", str(shakespeare_path), "--vocab_size", "300", "--tokenizer_path", str(path)]
    assert main(["tokenizer", "train", *flags]) == 0
    fingerprint = RegexTokenizer.load(path).fingerprint()
    # a run that used it: the message must name its checkpoint and prepared data
    out = tmp_path / "run"
    skip = ("vocab_size", "stdlib_max_mb", "max_new_tokens", "num_samples")
    tiny = [f"--{k}={v}" for k, v in TINY.items() if k not in skip]
    train_flags = ["--data", str(shakespeare_path), f"--tokenizer_path={path}", f"--out_dir={out}"]
    assert main(["train", *train_flags, *tiny, "--max_steps=1"]) == 0
    before = path.read_bytes()
    capsys.readouterr()
    assert main(["tokenizer", "train", *flags[:3], "310", *flags[4:]]) == 2
    err = capsys.readouterr().err
    assert f"already holds a 300-token tokenizer (fingerprint {fingerprint[:12]}" in err
    assert f"checkpoint {out / 'checkpoint.pt'}" in err and "prepared data" in err
    assert "--overwrite" in err and path.read_bytes() == before
    assert main(["tokenizer", "train", *flags[:3], "310", *flags[4:], "--overwrite"]) == 0
    assert RegexTokenizer.load(path).vocab_size == 310
    # the checkpoint now refuses the changed file, naming both fingerprints (not the path twice)
    assert main(["sample", f"--out_dir={out}", "--max_new_tokens=2"]) == 2
    err = capsys.readouterr().err
    assert f"fingerprint {fingerprint[:12]}), but that file now holds another tokenizer" in err


def test_tokenizer_train_reports_invalid_utf8_and_strict_refuses(tmp_path, capsys):
    corpus = tmp_path / "latin1.txt"
    corpus.write_bytes(("hello world " * 40).encode() + b"caf\xe9 na\xefve\n")
    flags = ["--data", str(corpus), "--vocab_size", "260"]
    assert main(["tokenizer", "train", *flags, f"--tokenizer_path={tmp_path / 'a.json'}"]) == 0
    assert "2 byte(s) of the corpus were not valid UTF-8" in capsys.readouterr().err
    strict = [*flags, f"--tokenizer_path={tmp_path / 'b.json'}", "--strict_utf8"]
    assert main(["tokenizer", "train", *strict]) == 2
    assert "is not valid UTF-8 (byte offset 483)" in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists()


def test_tokenizer_stats_on_a_directory_says_so(tmp_path, capsys):
    argv = ["tokenizer", "stats", str(tmp_path), "--use_tiktoken"]
    assert main(argv) == 2
    assert "is a directory; stats reads one text file" in capsys.readouterr().err
