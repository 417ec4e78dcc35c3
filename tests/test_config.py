"""Configuration: defaults, flags, TOML files, presets, and the errors users see."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mygpt2.cli import main
from mygpt2.config import (
    PRESETS,
    Config,
    DataConfig,
    ModelConfig,
    SampleConfig,
    TrainConfig,
    load_config,
)
from mygpt2.errors import MyGPT2Error
from mygpt2.model import GPT


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults():
    cfg, extras, positional = load_config([])
    assert cfg == Config()
    assert (extras, positional) == ({}, [])
    assert cfg.model == ModelConfig(n_layers=4, n_heads=4, n_emb=128, T=128, vocab_size=50257)
    assert cfg.train == TrainConfig() and cfg.data == DataConfig() and cfg.sample == SampleConfig()
    assert cfg.train.compile is False


@pytest.mark.parametrize(
    "argv", [["--n_layers", "4"], ["--n_layers=4"], ["--n-layers", "4"], ["--n-layers=4"]]
)
def test_int_flag_forms(argv):
    cfg, _, _ = load_config([*argv, "--n_heads", "2"])
    assert cfg.model.n_layers == 4 and cfg.model.n_heads == 2


def test_flags_of_every_section_and_type():
    argv = [
        "--lr",
        "3e-4",
        "--split=0.8",
        "--out_dir",
        "runs/a",
        "--max_steps",
        "1_000",
        "--top_p",
        "0.9",
    ]
    cfg, _, _ = load_config(argv)
    assert cfg.train.lr == 3e-4 and cfg.data.split == 0.8 and cfg.train.out_dir == "runs/a"
    assert cfg.train.max_steps == 1000 and cfg.sample.top_p == 0.9


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--compile", "true"], True),
        (["--compile", "false"], False),
        (["--compile=true"], True),
        (["--compile=False"], False),
        (["--compile", "0"], False),
        (["--compile", "yes"], True),
        (["--compile"], True),  # bare flag means true
        (["--compile", "--n_layers", "2"], True),  # bare, followed by another flag
    ],
)
def test_bool_flags(argv, expected):
    cfg, _, _ = load_config(argv)
    assert cfg.train.compile is expected


def test_positionals_and_extra_flags():
    cfg, extras, positional = load_config(
        ["data.txt", "--n_layers", "2", "--out", "x"], extra_flags=("out",)
    )
    assert positional == ["data.txt"] and extras == {"out": "x"} and cfg.model.n_layers == 2


def test_toml_flat(tmp_path: Path):
    path = write(
        tmp_path / "run.toml", 'n_layers = 6\nn_heads = 3\nn_emb = 96\nlr = 0.01\ndata = "x.txt"\n'
    )
    cfg, _, _ = load_config(["--config", str(path)])
    assert (cfg.model.n_layers, cfg.model.n_heads, cfg.model.n_emb) == (6, 3, 96)
    assert cfg.train.lr == 0.01 and cfg.data.data == "x.txt"


def test_toml_tables_and_flag_overrides(tmp_path: Path):
    path = write(
        tmp_path / "run.toml",
        "[model]\nn_layers = 6\nT = 64\n\n[train]\ncompile = true\nbatch_size = 8\n\n"
        "[sample]\ntemperature = 0.5\n",
    )
    cfg, _, _ = load_config(["--config", str(path)])
    assert cfg.model.n_layers == 6 and cfg.model.T == 64
    assert cfg.train.compile is True and cfg.train.batch_size == 8
    assert cfg.sample.temperature == 0.5
    # flags win over the file, wherever they stand on the command line
    cfg, _, _ = load_config(["--n_layers=2", "--config", str(path), "--compile", "false"])
    assert cfg.model.n_layers == 2 and cfg.model.T == 64 and cfg.train.compile is False


def test_toml_errors(tmp_path: Path):
    with pytest.raises(MyGPT2Error, match="does not exist"):
        load_config(["--config", str(tmp_path / "missing.toml")])
    bad = write(tmp_path / "bad.toml", "n_layers = = 4\n")
    with pytest.raises(MyGPT2Error, match="not valid TOML"):
        load_config(["--config", str(bad)])
    typo = write(tmp_path / "typo.toml", "[model]\nn_layer = 4\n")
    with pytest.raises(MyGPT2Error, match=r"'n_layer'.*Did you mean 'n_layers'"):
        load_config(["--config", str(typo)])
    wrong = write(tmp_path / "wrong.toml", "compile = 1\n")
    with pytest.raises(MyGPT2Error, match=r"'compile' must be bool.*true or false"):
        load_config(["--config", str(wrong)])


@pytest.mark.parametrize(
    ("argv", "key", "suggestion"),
    [
        (["--n_layer", "4"], "n_layer", "n_layers"),
        (["--n_layer=4"], "n_layer", "n_layers"),
        (["--n_embd", "64"], "n_embd", "n_emb"),
        (["--temprature", "0.5"], "temprature", "temperature"),
    ],
)
def test_unknown_key_names_it_and_suggests_closest(argv, key, suggestion):
    with pytest.raises(MyGPT2Error) as err:
        load_config(argv)
    message = str(err.value)
    assert f"'--{key}'" in message
    assert f"Did you mean '{suggestion}'?" in message


@pytest.mark.parametrize(
    ("argv", "key", "type_name"),
    [
        (["--n_layers", "four"], "n_layers", "int"),
        (["--n_layers", "2.5"], "n_layers", "int"),
        (["--lr", "fast"], "lr", "float"),
        (["--compile=maybe"], "compile", "bool"),
    ],
)
def test_wrong_type_names_key_and_type(argv, key, type_name):
    with pytest.raises(MyGPT2Error, match=rf"'{key}' must be {type_name}"):
        load_config(argv)


def test_flag_without_value():
    with pytest.raises(MyGPT2Error, match="needs a value"):
        load_config(["--n_layers"])
    with pytest.raises(MyGPT2Error, match="needs a value"):
        load_config(["--lr", "--n_layers", "2"])


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--n_emb", "100", "--n_heads", "3"], r"n_emb \(100\) must be divisible by n_heads \(3\)"),
        (["--n_layers", "0"], "n_layers"),
        (["--split", "1.0"], "split"),
        (["--dropout", "1.0"], "dropout"),
        (["--min_lr", "1", "--lr", "0.1"], "min_lr"),
        (["--top_p", "0"], "top_p"),
        (["--temperature", "-1"], "temperature"),
        (["--dtype", "float8"], "dtype"),
    ],
)
def test_invalid_combinations_fail_before_work(argv, words):
    with pytest.raises(MyGPT2Error, match=words):
        load_config(argv)


def test_dict_round_trip():
    cfg, _, _ = load_config(["--n_layers", "3", "--compile", "--data", "shakespeare"])
    assert Config.from_dict(cfg.to_dict()) == cfg
    assert Config.from_dict({"n_layers": 3}).model.n_layers == 3
    with pytest.raises(MyGPT2Error, match="Did you mean 'n_heads'"):
        Config.from_dict({"model": {"n_head": 3}})


# GPT-2's published sizes: 124M, 355M, 774M, 1558M parameters (tied embeddings counted once)
PRESET_PARAMS = {
    "gpt2": 124_439_808,
    "gpt2-medium": 354_823_168,
    "gpt2-large": 774_030_080,
    "gpt2-xl": 1_557_611_200,
}


@pytest.mark.parametrize("name", list(PRESET_PARAMS))
def test_presets_have_gpt2_sizes(name):
    cfg, _, _ = load_config(["--preset", name])
    assert cfg.model.vocab_size == 50257 and cfg.model.T == 1024
    with torch.device("meta"):  # shapes only: no memory, no time
        model = GPT(cfg.model)
    assert model.num_params() == PRESET_PARAMS[name]


def test_gpt2_preset_builds_124m():
    cfg, _, _ = load_config(["--preset", "gpt2"])
    assert (cfg.model.n_layers, cfg.model.n_heads, cfg.model.n_emb) == (12, 12, 768)
    model = GPT(cfg.model)
    assert model.num_params() / 1e6 == pytest.approx(124.4, abs=0.05)


def test_preset_then_flags_and_small_preset():
    cfg, _, _ = load_config(["--preset", "gpt2", "--T", "256"])
    assert cfg.model.n_layers == 12 and cfg.model.T == 256
    cfg, _, _ = load_config(["--preset", "small"])
    assert cfg.model.n_layers == PRESETS["small"]["n_layers"]
    with pytest.raises(MyGPT2Error, match="Did you mean 'gpt2-xl'"):
        load_config(["--preset", "gpt2-xxl"])


def test_cli_help_and_unknown_command(capsys):
    assert main([]) == 0
    assert "usage: mygpt2" in capsys.readouterr().out
    assert main(["--help"]) == 0
    assert "usage: mygpt2" in capsys.readouterr().out
    assert main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'frobnicate'" in err and "Traceback" not in err


def test_cli_process_prints_no_traceback():
    run = subprocess.run(
        [sys.executable, "-m", "mygpt2.cli", "frobnicate"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert "unknown command 'frobnicate'" in run.stderr
    assert "Traceback" not in run.stderr + run.stdout
