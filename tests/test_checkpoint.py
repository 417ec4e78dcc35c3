"""Checkpoints: corrupt or truncated files are clear errors, loading never runs code, and a
killed writer or a full disk leaves the previous checkpoint whole."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

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
