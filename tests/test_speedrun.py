"""The CPU speedrun's preset (docs/SPEEDRUN.md): it loads, it is the recipe the docs print,
its byte-level tokenizer is the text's UTF-8 bytes, and a few steps of it train and end with a
validation loss over the whole validation split."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mygpt2.checkpoint import load_checkpoint, model_from_checkpoint
from mygpt2.commands.args import parse, tomllib
from mygpt2.commands.train import COMMAND
from mygpt2.config import PRESETS, TokenizerConfig
from mygpt2.tokenizer import load_tokenizer
from mygpt2.train import train

DOC = Path(__file__).resolve().parents[1] / "docs" / "SPEEDRUN.md"
NAME = "shakespeare-speedrun"


def test_the_docs_print_the_preset_exactly():
    blocks = re.findall(r"```toml\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    recipes = [tomllib.loads(b) for b in blocks if "muon_lr" in b]
    assert recipes, "docs/SPEEDRUN.md has no toml block with the recipe"
    assert recipes[0] == PRESETS[NAME]


def test_preset_sets_the_recipe_and_flags_win():
    cfg = parse(["--preset", NAME, "--max_steps", "3"], COMMAND).config
    recipe = PRESETS[NAME]
    for key, value in recipe.items():
        if key != "max_steps":
            assert cfg.get(key) == value, key
            assert cfg.given[key] == f"preset {NAME}"
    assert cfg.train.max_steps == 3 and cfg.given["max_steps"] == "flag"
    # the recipe is byte-level Tiny Shakespeare, evaluated on all of the validation split:
    # 111,540 bytes make 1,743 blocks of T = 64, fewer than eval_batches x val_batch_size
    assert recipe["data"] == "shakespeare" and recipe["tokenizer_path"] == "bytes"
    assert recipe["eval_batches"] * recipe["val_batch_size"] * recipe["T"] >= 111_540


def test_bytes_tokenizer_is_the_utf8_bytes():
    tok = load_tokenizer(TokenizerConfig(tokenizer_path="bytes"))
    text = "To be, or not to be: café ☕\n"
    assert tok.encode_ordinary(text) == list(text.encode("utf-8"))
    assert tok.vocab_size == 257 and tok.eot_id == 256
    assert tok.decode(list(text.encode("utf-8"))) == text


def test_a_few_steps_of_the_preset_train_and_score_the_whole_val_split(tmp_path, shakespeare_path):
    text = tmp_path / "shakespeare-head.txt"  # the first 24,000 characters: seconds, not minutes
    text.write_text(shakespeare_path.read_text(encoding="utf-8")[:24_000], encoding="utf-8")
    flags = ["--preset", NAME, "--max_steps", "3", "--out_dir", str(tmp_path / "run")]
    flags += ["--batch_size", "4", "--macro_batch_size", "4"]  # the recipe's shape, less work
    flags += ["--dtype", "float32"]  # the tests' CPU has no native bf16 (conftest)
    flags += ["--shakespeare_path", str(text), "--cache_dir", str(tmp_path / "cache")]
    summary = train(parse(flags, COMMAND).config)
    assert summary["step"] == 3

    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    evals = [r for r in rows if "val_loss" in r]
    assert len(evals) == 1 and evals[0]["step"] == 3 and evals[0]["elapsed_s"] > 0

    # The run's val loss is the mean next-byte cross-entropy over ALL of the last 10%:
    # recomputed here from the saved weights with plain PyTorch, block by block.
    ids = np.frombuffer(text.read_bytes(), dtype=np.uint8).astype(np.int64)  # one id a byte
    val = torch.from_numpy(ids[int(len(ids) * 0.9) :])
    model = model_from_checkpoint(load_checkpoint(tmp_path / "run" / "checkpoint.pt")).eval()
    T, nats, count = model.config.T, 0.0, 0
    with torch.no_grad():
        for start in range(0, len(val) - 1, T):
            x, y = val[start : start + T], val[start + 1 : start + T + 1]
            logits, _ = model(x[: len(y)][None])
            nats += F.cross_entropy(logits[0].float(), y, reduction="sum").item()
            count += len(y)
    assert count == len(val) - 1
    assert math.isclose(evals[0]["val_loss"], nats / count, rel_tol=1e-4)
