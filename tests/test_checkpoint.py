"""Checkpoints: corrupt or truncated files are clear errors, loading never runs code, and a
killed writer or a full disk leaves the previous checkpoint whole."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mygpt2.checkpoint import load_checkpoint, save_checkpoint
from mygpt2.errors import MyGPT2Error


def test_corrupt_and_truncated_checkpoints_are_clear_errors(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(1000)}, "config": {}})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MyGPT2Error, match="truncated or corrupt"):
        load_checkpoint(path)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(MyGPT2Error, match="truncated or corrupt"):
        load_checkpoint(path)


def test_checkpoint_never_runs_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "checkpoint.pt"
    torch.save({"model": {}, "config": {}, "x": Evil()}, path)
    with pytest.raises(MyGPT2Error, match=r"refusing to load .*contains code"):
        load_checkpoint(path)


WRITER = """
import sys, torch
from mygpt2.checkpoint import save_checkpoint
path = sys.argv[1]
i = 0
while True:
    i += 1
    save_checkpoint(path, {"model": {"w": torch.full((2_000_000,), float(i))}, "config": {"i": i}})
    print(i, flush=True)
"""


def test_killing_a_writer_mid_save_leaves_a_readable_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    for delay in (0.05, 0.13, 0.31):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE)
        assert proc.stdout.readline()  # at least one complete save
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ckpt = load_checkpoint(path)
        i = ckpt["config"]["i"]
        assert torch.equal(ckpt["model"]["w"], torch.full((2_000_000,), float(i)))


def test_disk_full_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(3)}, "config": {}})

    def full_disk(obj, fh):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(MyGPT2Error, match="No space left"):
        save_checkpoint(path, {"model": {"w": torch.zeros(3)}, "config": {}})
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temp file left


# ------------------------------------------------------------- defaults and boundaries (#22)


def test_format_version_and_required_keys(tmp_path):
    from mygpt2.checkpoint import FORMAT_VERSION

    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"model": {}, "config": {}})
    assert load_checkpoint(path)["format_version"] == FORMAT_VERSION == 1
    torch.save({"model": {}, "config": {}}, path)  # written before versions: format 0
    assert load_checkpoint(path)["model"] == {}
    torch.save({"model": {}, "config": {}, "format_version": 2}, path)
    with pytest.raises(MyGPT2Error, match=r"written by a newer mygpt2 \(format 2\)"):
        load_checkpoint(path)
    for partial in ({"model": {}}, {"config": {}}, [1, 2]):
        torch.save(partial, path)
        with pytest.raises(MyGPT2Error, match="not a mygpt2 checkpoint"):
            load_checkpoint(path)


def test_rng_states_survive_a_save_and_load(tmp_path):
    """After set_rng_state, Python's, numpy's and torch's generators repeat the same draws."""
    import random

    import numpy as np

    from mygpt2.checkpoint import rng_state, set_rng_state

    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"model": {}, "config": {}, "rng": rng_state()})
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(10), np.random.seed(20), torch.manual_seed(30)  # somewhere else entirely
    set_rng_state(load_checkpoint(path)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_checkpoint_path_default_and_override():
    from mygpt2.checkpoint import checkpoint_path
    from mygpt2.config import Config

    cfg = Config()
    cfg.set("out_dir", "runs/a")
    assert checkpoint_path(cfg) == Path("runs/a") / "checkpoint.pt"
    cfg.set("checkpoint", "elsewhere/step100.pt")
    assert checkpoint_path(cfg) == Path("elsewhere/step100.pt")


class _Tok:
    def __init__(self, name, fingerprint):
        self.name, self._fp = name, fingerprint

    def fingerprint(self):
        return self._fp


def test_a_tokenizer_of_the_same_name_with_other_contents_is_refused():
    from mygpt2.checkpoint import check_tokenizer

    ckpt = {"tokenizer": {"name": "tok.json", "fingerprint": "a" * 64}}
    check_tokenizer(ckpt, _Tok("tok.json", "a" * 64), "ck.pt")  # the same: fine
    check_tokenizer({}, _Tok("tok.json", "b" * 64), "ck.pt")  # an old checkpoint: unchecked
    with pytest.raises(MyGPT2Error, match="that file now holds another tokenizer"):
        check_tokenizer(ckpt, _Tok("tok.json", "b" * 64), "ck.pt")
    with pytest.raises(MyGPT2Error, match="this run's tokenizer is gpt2"):
        check_tokenizer(ckpt, _Tok("gpt2", "b" * 64), "ck.pt")


def test_damaged_weights_are_named_not_a_traceback():
    from models import tiny_gpt

    from mygpt2.checkpoint import model_from_checkpoint

    model = tiny_gpt()
    cfg = {"model": dataclasses.asdict(model.config)}
    weights = dict(model.state_dict())
    good = model_from_checkpoint({"model": weights, "config": cfg})
    assert torch.equal(good.transformer.wte.weight, model.transformer.wte.weight)
    bad = {**weights, "extra.weight": torch.zeros(2)}
    with pytest.raises(MyGPT2Error, match=r"unexpected extra\.weight"):
        model_from_checkpoint({"model": bad, "config": cfg}, "ck.pt")
    bad = {**weights, "transformer.wpe.weight": torch.zeros(3, 32)}
    with pytest.raises(MyGPT2Error, match=r"transformer.wpe.weight has shape \(3, 32\), its "):
        model_from_checkpoint({"model": bad, "config": cfg}, "ck.pt")
    bad = {k: v for k, v in weights.items() if k != "transformer.wpe.weight"}
    with pytest.raises(MyGPT2Error, match=r"missing transformer\.wpe\.weight"):
        model_from_checkpoint({"model": bad, "config": cfg}, "ck.pt")


def test_resume_takes_the_checkpoints_shape_unless_a_new_one_is_given():
    from mygpt2.checkpoint import resume_config
    from mygpt2.config import Config

    saved = Config()
    saved.set("n_layers", 2)
    saved.set("n_emb", 64)
    ckpt = {"config": saved.to_dict()}
    given = Config()  # the command's defaults (n_layers 4, n_emb 128) were not given
    given.set("lr", 1e-3, "flag")
    merged = resume_config(ckpt, given, "ck.pt")
    assert (merged.model.n_layers, merged.model.n_emb, merged.train.lr) == (2, 64, 1e-3)
    given.set("n_layers", 3, "flag")
    with pytest.raises(MyGPT2Error, match="n_layers: checkpoint 2, given 3"):
        resume_config(ckpt, given, "ck.pt")
