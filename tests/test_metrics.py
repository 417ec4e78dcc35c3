"""What a run records and shows: metrics.jsonl rows, the plot, the Reporter's messages, and
file-system faults while logging as one-line messages."""

from __future__ import annotations

import json

import pytest

from mygpt2 import fileio
from mygpt2.errors import RunError
from mygpt2.metrics import MetricsLog, Reporter


def rows_of(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_log_writes_rows_and_a_resumed_log_drops_rows_past_its_checkpoint(tmp_path):
    log = MetricsLog(tmp_path)
    for step in (1, 2, 3):
        log.log({"kind": "train", "step": step, "loss": 5.0 - step})
    log.log({"kind": "eval", "step": 3, "val_loss": 2.5})
    log.plot(tokens_per_step=256)
    assert rows_of(tmp_path / "metrics.jsonl") == log.history
    assert (tmp_path / "loss_plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a checkpoint saved at step 2 carries two rows; the file is rewritten from them
    resumed = MetricsLog(tmp_path, log.history[:2])
    resumed.log({"kind": "train", "step": 3, "loss": 1.5})
    assert [r["step"] for r in rows_of(tmp_path / "metrics.jsonl")] == [1, 2, 3]


def test_a_disabled_log_keeps_history_but_writes_nothing(tmp_path):
    log = MetricsLog(tmp_path / "other-rank", enabled=False)
    log.log({"kind": "train", "step": 1, "loss": 1.0})
    log.plot(tokens_per_step=1)
    assert log.history == [{"kind": "train", "step": 1, "loss": 1.0}]
    assert not (tmp_path / "other-rank").exists()


def test_reporter_messages(capsys, tmp_path):
    report = Reporter()
    report.config("[model]\nn_layers = 2")
    report.banner(
        params=1_234_567,
        device="cpu",
        dtype="torch.float32",
        processes=2,
        accum_steps=4,
        tokens_per_step=8192,
        train_tokens=100_000,
        val_tokens=5_000,
    )
    report.start(total=10, initial=4)
    row = {"loss": 2.5, "lr": 1e-3, "tokens_per_s": 1234.5, "grad_norm": 0.5, "mfu": 0.25}
    report.step(row, val_loss=2.75)
    report.stopped(5, 10, "mygpt2 train --max_steps=10 --resume")
    report.nothing_to_do(10, 10, tmp_path, "mygpt2 train --resume --max_steps=20")
    report.nothing_to_do(12, 10, tmp_path, "mygpt2 train --resume --max_steps=24")
    report.done(10, 2.25, 2.5, tmp_path)
    captured = capsys.readouterr()
    out = captured.out
    assert out.startswith("[model]\nn_layers = 2\n")
    assert (
        "\nmodel: 1.23M parameters | device cpu | dtype float32 | processes 2 | accum_steps 4 | "
        "8,192 tokens/step | data 100,000 train + 5,000 val tokens\n"
    ) in out
    assert "\nstopped at step 5 of 10; resume with: mygpt2 train --max_steps=10 --resume\n" in out
    assert (
        f"the run in '{tmp_path}' is already finished (step 10 of 10); nothing to do. To train "
        "further, resume with a larger --max_steps, e.g.: mygpt2 train --resume --max_steps=20\n"
    ) in out
    assert f"the run in '{tmp_path}' is past max_steps 10 (step 12 of 10)" in out
    assert (
        f"\ndone: 10 steps, final train loss 2.2500, best val loss 2.5000; outputs in '{tmp_path}'."
    ) in out
    bar = captured.err  # tqdm draws on stderr
    for shown in ("5/10", "loss=2.5000", "lr=1.00e-03", "tok/s=1,234", "gnorm=0.50", "mfu=25%"):
        assert shown in bar, shown
    assert "val=2.7500" in bar


def test_only_an_enabled_reporter_prints(capsys, tmp_path):
    quiet = Reporter(enabled=False)
    quiet.config("x")
    quiet.start(total=3, initial=0)
    quiet.step({"loss": 1.0, "lr": 1.0, "tokens_per_s": 1.0, "grad_norm": None})
    quiet.stopped(1, 3, "x")
    quiet.nothing_to_do(3, 3, tmp_path, "x")
    quiet.done(3, 1.0, 1.0, tmp_path)
    assert capsys.readouterr() == ("", "")


def test_a_full_disk_while_logging_is_one_line_naming_the_file(tmp_path, monkeypatch):
    log = MetricsLog(tmp_path)
    log.log({"kind": "train", "step": 1, "loss": 1.0})

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fileio, "open", full, raising=False)  # fileio's own `open` only
    with pytest.raises(RunError) as e:
        log.log({"kind": "train", "step": 2, "loss": 0.5})
    assert str(e.value) == (
        f"could not append to '{tmp_path / 'metrics.jsonl'}': the disk is full; free some "
        "space or choose another --out_dir (No space left on device)."
    )
    assert e.value.exit_code == 1
    monkeypatch.undo()
    assert rows_of(tmp_path / "metrics.jsonl") == [{"kind": "train", "step": 1, "loss": 1.0}]


def test_the_log_directory_being_a_file_is_one_line(tmp_path):
    (tmp_path / "out").write_text("not a directory", encoding="utf-8")
    with pytest.raises(RunError, match=r"could not create the directory .*out': a regular file"):
        MetricsLog(tmp_path / "out")
