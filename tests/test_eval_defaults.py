"""`mygpt2 eval`'s documented defaults, pinned: without --stride the windows are disjoint blocks
of the model's T (`--help`: "tokens scored per window (default: T, disjoint blocks)"), and of
the --context T when that crops the model's."""

from __future__ import annotations

import json
import math

import pytest
from models import tiny_gpt

from mygpt2.checkpoint import save_checkpoint
from mygpt2.cli import main
from mygpt2.commands.args import load_config
from mygpt2.commands.eval import COMMAND
from mygpt2.tokenizer import RegexTokenizer

T = 16
TEXT = "Before we proceed any further, hear me speak. Speak, speak!\n" * 3  # 180 bytes


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A random byte-level model with T = 16 (no tokenizer file: `bytes`)."""
    root = tmp_path_factory.mktemp("eval-defaults")
    flags = ["--tokenizer_path=bytes", "--n_layers=1", "--n_heads=2", "--n_emb=32", f"--T={T}"]
    cfg = load_config([*flags, "--vocab_size=257"])
    model = tiny_gpt(seed=4, n_layers=1, n_heads=2, n_emb=32, T=T, vocab_size=257)
    tok = RegexTokenizer(name="bytes")
    state = {"name": tok.name, "fingerprint": tok.fingerprint()}
    path = root / "checkpoint.pt"
    save_checkpoint(
        path, {"model": model.state_dict(), "config": cfg.to_dict(), "tokenizer": state}
    )
    (root / "text.txt").write_text(TEXT, encoding="utf-8")
    return path


def scored(ckpt, capsys, *flags: str) -> dict:
    argv = ["eval", "--checkpoint", str(ckpt), "--data", str(ckpt.parent / "text.txt")]
    assert main([*argv, *flags, "--device=cpu", "--json=-"]) == 0
    return json.loads(capsys.readouterr().out)["models"][0]


def test_the_documented_default_is_T():
    assert "default: T, disjoint blocks" in COMMAND.extra["stride"]


def test_without_stride_the_windows_are_disjoint_blocks_of_T(ckpt, capsys):
    default = scored(ckpt, capsys)
    n = len(TEXT.encode("utf-8"))  # the targets: every byte after the leading end-of-text
    assert (default["stride"], default["tokens"]) == (T, n)
    assert default["windows"] == math.ceil(n / T) == 12
    assert default == {**scored(ckpt, capsys, f"--stride={T}"), "seconds": default["seconds"]}
    half = scored(ckpt, capsys, f"--stride={T // 2}")
    assert half["windows"] == 1 + math.ceil((n - T) / (T // 2)) and half["loss"] != default["loss"]


def test_without_stride_a_cropped_context_moves_by_its_own_length(ckpt, capsys):
    cropped = scored(ckpt, capsys, "--context=8")
    n = len(TEXT.encode("utf-8"))
    assert (cropped["T"], cropped["stride"], cropped["windows"]) == (8, 8, math.ceil(n / 8))
