"""Faults and hostile files, injected on purpose: every one is a one-line message with an
honest exit code, nothing runs code, and nothing that existed before is lost."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

from mygpt2.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from mygpt2.cli import main
from mygpt2.config import Config, ModelConfig
from mygpt2.errors import MyGPT2Error
from mygpt2.hf import from_pretrained, save_pretrained
from mygpt2.model import GPT


class RunsCode:
    """Unpickling this would run a shell command that creates a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def tiny() -> GPT:
    return GPT(ModelConfig(n_layers=1, n_heads=2, n_emb=16, T=8, vocab_size=50))


def test_a_checkpoint_with_code_is_refused_and_nothing_runs(tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": {}, "config": {}, "x": RunsCode(marker)}, path)
    with pytest.raises(MyGPT2Error) as e:
        load_checkpoint(path)
    message = str(e.value)
    assert message.startswith(f"refusing to load '{path}': it contains code or objects")
    assert "do not load it with weights_only=False" in message
    assert "Re-running" not in message and "trusted source" not in message  # torch's hint
    for argv in (["sample", f"--checkpoint={path}"], ["export", f"--checkpoint={path}"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "refusing to load" in err and "Traceback" not in err
    assert not marker.exists()


def test_hf_weights_with_code_are_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    save_pretrained(tiny(), tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save({"w": RunsCode(marker)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(
        MyGPT2Error, match=r"refusing to load .*pytorch_model\.bin.*weights_only=False"
    ):
        from_pretrained(str(tmp_path))
    assert not marker.exists()


def test_other_files_are_data_only(tmp_path, capsys):
    """tokenizer.json, meta.json and TOML are parsed as data: a payload in them is just text."""
    marker = tmp_path / "pwned"
    payload = f"__import__('os').system('touch {marker}')"
    tok = tmp_path / "tokenizer.json"
    tok.write_text(json.dumps({"model": {"mygpt2": {"format_version": 1}}, "x": payload}))
    toml = tmp_path / "run.toml"
    toml.write_text(f'start = "{payload}"\n', encoding="utf-8")
    assert (
        main(["sample", f"--config={toml}", f"--tokenizer_path={tok}", f"--out_dir={tmp_path}"])
        == 2
    )
    assert main(["tokenizer", "show", "x", f"--tokenizer_path={tok}"]) == 2
    assert "missing or malformed field" in capsys.readouterr().err
    assert not marker.exists()


def test_a_checkpoint_with_wrongly_shaped_tensors_names_them(tmp_path, capsys):
    model = tiny()
    state = model.state_dict()
    state["transformer.wpe.weight"] = torch.zeros(4, 16)
    cfg = Config()
    cfg.model = model.config
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"model": state, "config": cfg.to_dict()})
    with pytest.raises(
        MyGPT2Error,
        match=r"transformer\.wpe\.weight has shape \(4, 16\), its config needs \(8, 16\)",
    ):
        model_from_checkpoint(load_checkpoint(path), path)
    assert main(["export", f"--checkpoint={path}"]) == 2
    err = capsys.readouterr().err
    assert "does not match the model its config describes" in err and "Traceback" not in err


def test_an_unwritable_output_is_exit_code_1_and_keeps_the_previous_file(
    tmp_path, monkeypatch, capsys
):
    model = tiny()
    cfg = Config()
    cfg.model = model.config
    save_checkpoint(
        tmp_path / "checkpoint.pt", {"model": model.state_dict(), "config": cfg.to_dict()}
    )
    blocker = tmp_path / "model.safetensors"
    blocker.mkdir()  # a directory where the export wants a file
    assert main(["export", f"--out_dir={tmp_path}"]) == 1
    err = capsys.readouterr().err
    assert "could not write" in err and "Traceback" not in err
    assert load_checkpoint(tmp_path / "checkpoint.pt")["model"].keys() == model.state_dict().keys()


@pytest.mark.skipif(sys.platform != "linux", reason="ENOSPC injection uses Linux errno values")
def test_disk_full_during_a_tokenizer_write_keeps_the_old_file(tmp_path, monkeypatch):
    from mygpt2 import fileio
    from mygpt2.tokenizer import RegexTokenizer

    path = tmp_path / "tokenizer.json"
    first = RegexTokenizer()
    first.train("hello hello world " * 50, 260)
    first.save(path)
    before = path.read_bytes()
    real_fsync = os.fsync

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fileio.os, "fsync", full)
    second = RegexTokenizer()
    second.train("other text entirely " * 50, 270)
    with pytest.raises(MyGPT2Error, match="the disk is full") as e:
        second.save(path)
    assert e.value.exit_code == 1
    monkeypatch.setattr(fileio.os, "fsync", real_fsync)
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["tokenizer.json"]
