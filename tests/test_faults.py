"""Faults and hostile files, injected on purpose: every one is a one-line message with an
honest exit code, nothing runs code, and nothing that existed before is lost; a training run
killed with SIGKILL at random moments resumes to the same weights as one never killed."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train import REPO, make_corpus, tiny_args

from mygpt2 import fileio
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


# ----------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shakespeare_path) -> dict[str, str]:
    return make_corpus(tmp_path_factory.mktemp("corpus"), shakespeare_path)


def one_error_line(capsys) -> str:
    """The one error line on stderr (the progress bar may be there too), and the last."""
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and err.endswith(errors[0] + "\n") and "Traceback" not in err, err
    return errors[0]


def test_an_out_dir_that_is_a_file_is_one_line_and_exit_1(corpus, tmp_path, capsys):
    out = tmp_path / "out"
    out.write_text("my notes", encoding="utf-8")
    assert main(["train", *tiny_args(corpus, out)]) == 1
    assert one_error_line(capsys) == (
        f"mygpt2 train: error: could not create the directory '{out}': a regular file has that "
        "name; choose another path."
    )
    assert out.read_text(encoding="utf-8") == "my notes"


def test_a_read_only_out_dir_is_one_line_and_exit_1(corpus, tmp_path, capsys, monkeypatch):
    (tmp_path / "checkpoint.pt").write_bytes(b"the previous run")
    real_open = os.open

    def read_only(path, *args, **kwargs):  # what a read-only mount answers, also for root
        if str(path).startswith(str(tmp_path)):
            raise OSError(30, "Read-only file system")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    assert main(["train", *tiny_args(corpus, tmp_path), "--resume"]) == 1
    monkeypatch.undo()
    assert one_error_line(capsys) == (
        f"mygpt2 train: error: could not create the lock file '{tmp_path / '.lock'}': the file "
        "system is read-only; choose another --out_dir (Read-only file system)."
    )
    assert (tmp_path / "checkpoint.pt").read_bytes() == b"the previous run"


def disk_full_on_save(n: int):
    """A `torch.save` that raises ENOSPC on its n-th call and saves as usual otherwise, and
    the list of the steps it was called for."""
    real_save, calls = torch.save, []

    def save(obj, fh, *rest, **kw):
        calls.append(obj["step"])
        if len(calls) == n:
            raise OSError(28, "No space left on device")
        return real_save(obj, fh, *rest, **kw)

    return save, calls


@pytest.mark.skipif(sys.platform != "linux", reason="ENOSPC injection uses Linux errno values")
def test_disk_full_while_training_keeps_the_last_checkpoint(corpus, tmp_path, capsys, monkeypatch):
    """ENOSPC on the second checkpoint write, then on a metrics.jsonl append: exit 1, one
    line naming the file, the previous checkpoint intact, no temporary files, lock released."""
    args = tiny_args(corpus, tmp_path, max_steps=6, eval_interval=2)
    full_on_the_second, saves = disk_full_on_save(2)
    monkeypatch.setattr(torch, "save", full_on_the_second)
    assert main(["train", *args]) == 1
    monkeypatch.undo()
    path = tmp_path / "checkpoint.pt"
    assert one_error_line(capsys) == (
        f"mygpt2 train: error: could not write '{path}': the disk is full; free some space or "
        "choose another --out_dir (No space left on device). The previous file, if any, is intact."
    )
    assert saves == [2, 4] and load_checkpoint(path)["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint.pt",
        "loss_plot.png",
        "metrics.jsonl",
    ]

    appends = []

    def full_on_the_third(path, *rest, **kw):  # fileio's own `open`: append_text's
        appends.append(Path(path).name)
        if len(appends) == 3:
            raise OSError(28, "No space left on device")
        return open(path, *rest, **kw)

    monkeypatch.setattr(fileio, "open", full_on_the_third, raising=False)
    assert main(["train", *args, "--resume"]) == 1
    monkeypatch.undo()
    # rows of steps 3 and 4 went in, step 4's eval row did not; step 4 is saved all the same
    # (a crash in the run's own tools keeps the step), and the one line says both
    assert one_error_line(capsys).startswith(
        "mygpt2 train: error: the evaluation failed after step 4 (could not append to "
        f"'{tmp_path / 'metrics.jsonl'}': the disk is full; free some space or choose another "
        f"--out_dir (No space left on device)); saved the checkpoint at step 4 in '{path}'"
    )
    assert appends == ["metrics.jsonl"] * 3 and load_checkpoint(path)["step"] == 4
    assert not (tmp_path / ".lock").exists()


def test_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run(corpus, tmp_path):
    """Evaluation and checkpoint at every step; SIGKILL lands at a seeded random moment after
    each process's first save (mid-step, mid-evaluation, mid-plot, mid-save). Every --resume
    finds a readable checkpoint (and takes over the dead run's lock), and the final weights
    equal those of a run that was never killed, bit for bit."""
    from mygpt2.commands.args import load_config
    from mygpt2.train import train

    common = dict(max_steps=10, eval_interval=1, dropout=0.1)
    # one thread everywhere: bitwise equality needs the same reduction order in both runs
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # evaluating draws no randomness: the straight run evaluates only at its end
        plain = tiny_args(corpus, tmp_path / "straight", **{**common, "eval_interval": 100})
        train(load_config(plain))
    finally:
        torch.set_num_threads(threads)
    out = tmp_path / "killed"
    ckpt = out / "checkpoint.pt"
    rng = random.Random(11)
    outputs, killed = [], []
    for attempt in range(4):
        resume = ["--resume"] if ckpt.exists() else []
        proc = subprocess.Popen(
            [
                sys.executable,
                str(REPO / "run_train.py"),
                *tiny_args(corpus, out, **common),
                *resume,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        if attempt < 3:  # once this process has saved (progress), at a random moment after
            before = ckpt.stat().st_mtime_ns if ckpt.exists() else None
            deadline = time.time() + 60
            while proc.poll() is None and (not ckpt.exists() or ckpt.stat().st_mtime_ns == before):
                assert time.time() < deadline, "no checkpoint written"
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.3))
            proc.send_signal(signal.SIGKILL)
        outputs.append(proc.communicate(timeout=120)[0])
        killed.append(proc.returncode == -signal.SIGKILL)
        assert killed[-1] or proc.returncode == 0, outputs[-1]  # or it finished first
        step = load_checkpoint(ckpt)["step"]  # always readable, whatever the kill hit
        assert step >= 1
    assert not killed[-1] and step == 10, outputs[-1]
    assert any(killed)
    for was_killed, next_output in zip(killed, outputs[1:], strict=False):
        if was_killed:  # the dead run's lock is taken over, with a note
            assert "took over a stale lock" in next_output
    straight = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")["model"]
    final = load_checkpoint(ckpt)["model"]
    assert straight.keys() == final.keys()
    for key in straight:
        assert torch.equal(straight[key], final[key]), key
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp") or p.name == ".lock"]
