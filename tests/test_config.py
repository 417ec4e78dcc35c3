"""Configuration: defaults, flags, TOML files, presets, and the errors users see."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mygpt2.cli import main
from mygpt2.commands.args import Command, load_config, parse
from mygpt2.config import (
    PRESETS,
    Config,
    DataConfig,
    ModelConfig,
    SampleConfig,
    TrainConfig,
    format_config,
    merge_saved,
)
from mygpt2.errors import MyGPT2Error
from mygpt2.model import GPT


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults():
    cfg = load_config([])
    assert cfg == Config() and cfg.given == {}
    assert cfg.model == ModelConfig(n_layers=4, n_heads=4, n_emb=128, T=128, vocab_size=50257)
    assert cfg.train == TrainConfig() and cfg.data == DataConfig() and cfg.sample == SampleConfig()
    assert cfg.train.compile is False


@pytest.mark.parametrize(
    "argv", [["--n_layers", "4"], ["--n_layers=4"], ["--n-layers", "4"], ["--n-layers=4"]]
)
def test_int_flag_forms(argv):
    cfg = load_config([*argv, "--n_heads", "2"])
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
    cfg = load_config(argv)
    assert cfg.train.lr == 3e-4 and cfg.data.split == 0.8 and cfg.run.out_dir == "runs/a"
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
    cfg = load_config(argv)
    assert cfg.train.compile is expected


def test_positionals_and_extra_flags():
    command = Command("x", "usage", {"model": None}, extra={"out": "where"})
    args = parse(["data.txt", "--n_layers", "2", "--out", "x"], command)
    assert args.positional == ["data.txt"] and args.extras == {"out": "x"}
    assert args.config.model.n_layers == 2 and args.config.given == {"n_layers": "flag"}


def test_toml_flat(tmp_path: Path):
    path = write(
        tmp_path / "run.toml", 'n_layers = 6\nn_heads = 3\nn_emb = 96\nlr = 0.01\ndata = "x.txt"\n'
    )
    cfg = load_config(["--config", str(path)])
    assert (cfg.model.n_layers, cfg.model.n_heads, cfg.model.n_emb) == (6, 3, 96)
    assert cfg.train.lr == 0.01 and cfg.data.data == "x.txt"


def test_toml_tables_and_flag_overrides(tmp_path: Path):
    path = write(
        tmp_path / "run.toml",
        "[model]\nn_layers = 6\nT = 64\n\n[train]\ncompile = true\nbatch_size = 8\n\n"
        "[sample]\ntemperature = 0.5\n",
    )
    cfg = load_config(["--config", str(path)])
    assert cfg.model.n_layers == 6 and cfg.model.T == 64
    assert cfg.train.compile is True and cfg.train.batch_size == 8
    assert cfg.sample.temperature == 0.5
    # flags win over the file, wherever they stand on the command line
    cfg = load_config(["--n_layers=2", "--config", str(path), "--compile", "false"])
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
    ("line", "message"),
    [
        ('n_layers = "2"', r"'n_layers' must be int, got '2'\. Write it without quotes\."),
        ('lr = "3e-4"', r"'lr' must be float, got '3e-4'\. Write it without quotes\."),
        ('compile = "yes"', r"'compile' must be bool, got 'yes'\. Use true or false, without"),
    ],
)
def test_toml_numbers_and_booleans_in_quotes_are_refused(tmp_path: Path, line, message):
    """TOML has numbers and booleans of its own: a quoted one is a slip, refused by name (the
    same text as a flag is parsed: flags are text)."""
    path = write(tmp_path / "quoted.toml", line + "\n")
    with pytest.raises(MyGPT2Error, match=message):
        load_config(["--config", str(path)])
    key, value = line.replace('"', "").split(" = ")
    flag = load_config([f"--{key}", value])
    assert flag.given[key] == "flag"


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
        (["--dtype", "float8"], "dtype"),
    ],
)
def test_invalid_combinations_fail_before_work(argv, words):
    with pytest.raises(MyGPT2Error, match=words):
        load_config(argv)


def test_dict_round_trip():
    cfg = load_config(["--n_layers", "3", "--compile", "--data", "shakespeare"])
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
    cfg = load_config(["--preset", name])
    assert cfg.model.vocab_size == 50257 and cfg.model.T == 1024
    with torch.device("meta"):  # shapes only: no memory, no time
        model = GPT(cfg.model)
    assert model.num_params() == PRESET_PARAMS[name]


def test_gpt2_preset_builds_124m():
    cfg = load_config(["--preset", "gpt2"])
    assert (cfg.model.n_layers, cfg.model.n_heads, cfg.model.n_emb) == (12, 12, 768)
    model = GPT(cfg.model)
    assert model.num_params() / 1e6 == pytest.approx(124.4, abs=0.05)


def test_preset_then_flags_and_small_preset():
    cfg = load_config(["--preset", "gpt2", "--T", "256"])
    assert cfg.model.n_layers == 12 and cfg.model.T == 256
    cfg = load_config(["--preset", "small"])
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


# ---- the config knows what was said ---------------------------------------------------------


def test_given_records_each_key_and_where_it_came_from(tmp_path: Path):
    path = write(tmp_path / "run.toml", "[train]\nlr = 0.01\nbatch_size = 8\n")
    cfg = load_config(["--preset", "gpt2", "--config", str(path), "--lr", "1e-3", "--T=256"])
    # a flag equal to the default still counts as given: nothing is guessed from values
    assert cfg.train.lr == 1e-3 and cfg.given["lr"] == "flag"
    assert cfg.given["batch_size"] == f"file {path}"
    assert cfg.given["n_layers"] == "preset gpt2" and cfg.given["T"] == "flag"
    assert "max_steps" not in cfg.given


def test_format_config_marks_where_non_defaults_came_from(tmp_path: Path):
    path = write(tmp_path / "run.toml", "batch_size = 8\n")
    cfg = load_config(["--config", str(path), "--lr", "0.003"])
    text = format_config(cfg)
    lines = {line.split(" = ")[0]: line for line in text.splitlines() if " = " in line}
    assert lines["lr"].endswith("# flag") and lines["batch_size"].endswith(f"# file {path}")
    assert "#" not in lines["max_steps"]  # defaults carry no mark
    assert text.splitlines()[0] == "[model]"


def test_resume_merge_takes_given_keys_over_the_checkpoint():
    saved = load_config(["--lr", "3e-3", "--dropout", "0.1", "--weight_decay", "0.2"])
    saved.train.stop_at, saved.train.max_steps = 50, 200
    # the user gives values equal to the defaults: they must still win (the old bug)
    now = load_config(["--resume", "--lr", "1e-3", "--dropout", "0.0", "--weight_decay", "0.1"])
    merged = merge_saved(saved, now)
    assert (merged.train.lr, merged.model.dropout, merged.train.weight_decay) == (1e-3, 0.0, 0.1)
    assert merged.train.max_steps == 200 and merged.given["max_steps"] == "checkpoint"
    assert merged.train.stop_at == 0 and merged.train.resume is True  # never inherited
    assert merged.given["lr"] == "flag"


# ---- each command takes its own flags --------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["sample", "--lr", "5"], r"mygpt2 sample does not take --lr \(a \[train\] setting"),
        (
            ["sample", "--temprature", "1"],
            "unknown flag '--temprature' for mygpt2 sample. Did you mean 'temperature'",
        ),
        (["prepare", "--n_layers", "2"], "mygpt2 prepare does not take --n_layers"),
        (["export", "--seed", "1"], "mygpt2 export does not take --seed"),
        (
            ["tokenizer", "stats", "--max_steps", "3"],
            "mygpt2 tokenizer stats does not take --max_steps",
        ),
        (["train", "--top_k", "3"], "mygpt2 train does not take --top_k"),
    ],
)
def test_inapplicable_flag_is_a_usage_error(argv, words, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert re.search(words, err) and "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "present", "absent"),
    [
        (
            ["train", "--help"],
            ["--lr FLOAT", "[model]", "--preset", "peak learning rate"],
            ["--top_k", "--checkpoint STR"],
        ),
        (
            ["sample", "--help"],
            ["--top_k INT", "[sample]", "--checkpoint STR", "--dtype"],
            ["--lr", "--n_layers", "--preset"],
        ),
        (["prepare", "--help"], ["--data STR", "--split FLOAT"], ["--lr", "--top_k"]),
        (
            ["tokenizer", "train", "--help"],
            ["--vocab_size INT", "--split_pattern", "--export_tiktoken"],
            ["--lr", "--n_layers"],
        ),
        (["export", "--help"], ["--hf", "--out_dir"], ["--lr", "--device"]),
    ],
)
def test_help_lists_just_the_commands_flags_with_descriptions(argv, present, absent, capsys):
    assert main(argv) == 0
    out = capsys.readouterr().out
    for word in present:
        assert word in out, word
    for word in absent:
        assert word not in out, word
    assert "[default:" in out


def test_demo_help_shows_the_demos_own_defaults(capsys):
    """The demo runs with settings of its own (out-demo/, 1000 steps, a 4x128 model): its help
    says those, not the config's defaults, and train's help still says the config's."""
    import re

    from mygpt2.commands.demo import DEMO_SETTINGS

    def defaults(argv: list[str]) -> dict[str, str]:
        assert main(argv) == 0
        out = {}
        for entry in re.split(r"\n(?=    --)", capsys.readouterr().out):  # one flag each
            found = re.search(r"--(\w+) [A-Z]+ .*\[default: (.*?)\]", " ".join(entry.split()))
            if found:
                out[found[1]] = found[2]
        return out

    demo = defaults(["demo", "--help"])
    for key in ("out_dir", "max_steps", "n_layers", "n_emb", "vocab_size", "lr", "top_k"):
        assert demo[key] == DEMO_SETTINGS[key], key
    train = defaults(["train", "--help"])
    assert train["out_dir"] == "out" and train["max_steps"] == str(TrainConfig().max_steps)


def test_toml_keys_of_other_commands_are_skipped_with_a_note(tmp_path: Path, capsys):
    from mygpt2.commands.sample import COMMAND as SAMPLE

    path = write(tmp_path / "run.toml", "[train]\nlr = 0.01\n[sample]\ntop_k = 5\n")
    cfg = parse(["--config", str(path)], SAMPLE).config
    assert cfg.sample.top_k == 5 and cfg.train.lr == TrainConfig().lr
    assert "does not use lr; skipped" in capsys.readouterr().err
    typo = write(tmp_path / "typo.toml", "[sample]\ntop_kk = 5\n")
    with pytest.raises(MyGPT2Error, match=r"unknown config key 'top_kk'\. Did you mean 'top_k'"):
        parse(["--config", str(typo)], SAMPLE)
