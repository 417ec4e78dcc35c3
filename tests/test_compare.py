"""Comparing runs: the table's figures by hand from written metrics, time from elapsed_s or
estimated from tokens/s, the target, config differences, tokenizers, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mygpt2.checkpoint import save_checkpoint
from mygpt2.cli import main
from mygpt2.compare import compare_runs, format_differences, format_table, load_run, summary
from mygpt2.config import Config
from mygpt2.errors import MyGPT2Error


def write_run(
    directory: Path,
    evals: list[tuple[int, float, float | None]],
    *,
    tokens_per_step: int = 100,
    seconds_per_step: float = 0.5,
    logged_time: bool = True,
    config: dict | None = None,
    tokenizer: str = "tok-a",
) -> Path:
    """A run directory: 4 train steps, eval rows (step, val_loss, val_bpb) and a checkpoint
    holding only a config and a tokenizer fingerprint."""
    directory.mkdir(parents=True)
    rows = []
    for step in range(1, 5):
        row = {
            "kind": "train",
            "step": step,
            "loss": 5.0 - step / 2,
            "tokens": step * tokens_per_step,
            "tokens_per_s": tokens_per_step / seconds_per_step,
        }
        if logged_time:
            row["elapsed_s"] = step * seconds_per_step
        rows.append(row)
        for s, loss, bpb in evals:
            if s == step:
                e = {"kind": "eval", "step": s, "val_loss": loss, "tokens": s * tokens_per_step}
                if bpb is not None:
                    e["val_bpb"] = bpb
                if logged_time:
                    e["elapsed_s"] = s * seconds_per_step
                rows.append(e)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (directory / "metrics.jsonl").write_text(text, encoding="utf-8")
    cfg = Config.from_dict(config or {})
    cfg.run.out_dir = str(directory)
    save_checkpoint(
        directory / "checkpoint.pt",
        {"model": {}, "config": cfg.to_dict(), "tokenizer": {"fingerprint": tokenizer}},
    )
    return directory


def test_the_table_by_hand(tmp_path):
    fast = write_run(tmp_path / "fast", [(2, 3.0, 1.5), (4, 2.5, 1.2)], seconds_per_step=0.25)
    slow = write_run(tmp_path / "slow", [(2, 3.2, 1.6), (4, 2.9, 1.4)], seconds_per_step=1.0)
    c = compare_runs([slow, fast], target=3.0)
    s = summary(c.runs[1], c.metric, c.target)
    assert s["final"] == 2.5 and s["best"] == 2.5 and s["bpb"] == 1.2
    assert s["wall_s"] == 1.0 and s["tokens_per_s"] == 400 / 1.0
    assert (s["to_target_s"], s["to_target_step"]) == (0.5, 2)  # 3.0 at step 2: at or below
    s = summary(c.runs[0], c.metric, c.target)
    assert (s["to_target_s"], s["to_target_step"]) == (4.0, 4)  # 3.2 > 3.0; 2.9 at step 4
    table = format_table(c).splitlines()
    assert table[0].split()[:3] == ["run", "steps", "tokens"]
    assert str(fast) in table[2] and str(slow) in table[3]  # best first
    assert "0.5 s (step 2)" in table[2]


def test_default_target_is_the_loss_every_run_reached(tmp_path):
    a = write_run(tmp_path / "a", [(2, 3.0, None), (4, 2.0, None)])
    b = write_run(tmp_path / "b", [(2, 3.5, None), (4, 2.8, None)])
    c = compare_runs([a, b])
    assert c.target == 2.8 and not c.target_given
    assert summary(c.runs[0], c.metric, c.target)["to_target_step"] == 4
    assert "time to 2.8000 (reached by all)" in format_table(c)


def test_time_is_estimated_from_tokens_per_second_in_older_logs(tmp_path):
    """Logs written before elapsed_s: each step's tokens / tokens_per_s, summed."""
    old = write_run(tmp_path / "old", [(4, 2.0, None)], seconds_per_step=0.5, logged_time=False)
    run = load_run(old)
    assert run.seconds == {1: 0.5, 2: 1.0, 3: 1.5, 4: 2.0}
    assert summary(run, "val_loss", 2.0)["to_target_s"] == 2.0


def test_config_differences_leave_out_where_the_runs_went(tmp_path):
    a = write_run(tmp_path / "a", [(4, 2.0, None)], config={"lr": 1e-3, "optimizer": "adamw"})
    b = write_run(tmp_path / "b", [(4, 2.0, None)], config={"lr": 3e-3, "optimizer": "muon"})
    text = format_differences(compare_runs([a, b]).runs)
    lines = text.splitlines()
    assert lines[1].split() == ["run", "lr", "optimizer"]  # not out_dir
    assert lines[2].split() == [str(a), "0.001", "adamw"]
    assert lines[3].split() == [str(b), "0.003", "muon"]
    same = write_run(tmp_path / "c", [(4, 2.0, None)], config={"lr": 1e-3, "optimizer": "adamw"})
    assert format_differences(compare_runs([a, same]).runs).endswith("none (apart from out_dir).")


def test_runs_of_different_tokenizers_compare_by_bits_per_byte(tmp_path):
    a = write_run(tmp_path / "a", [(4, 2.0, 1.3)], tokenizer="bytes")
    b = write_run(tmp_path / "b", [(4, 3.5, 1.1)], tokenizer="bpe")
    c = compare_runs([a, b])
    assert c.metric == "val_bpb" and "compared by validation bits per byte" in c.notes[0]
    assert c.target == 1.3  # in bits per byte
    assert format_table(c).splitlines()[2].startswith(str(b))  # 1.1 bpb beats 1.3
    old = write_run(tmp_path / "old", [(4, 2.0, None)], tokenizer="bpe2")
    c = compare_runs([a, old])
    assert c.metric == "val_loss" and f"{old} logged none" in c.notes[0]


def test_bad_run_directories_are_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MyGPT2Error, match=r"has no metrics\.jsonl"):
        load_run(tmp_path / "empty")
    with pytest.raises(MyGPT2Error, match="is not a directory"):
        load_run(tmp_path / "missing")
    run = write_run(tmp_path / "run", [(4, 2.0, None)])
    metrics = run / "metrics.jsonl"
    good = metrics.read_text(encoding="utf-8")
    metrics.write_text(good + '{"kind": "tr', encoding="utf-8")  # killed mid-append
    assert len(load_run(run).rows) == 5
    metrics.write_text('{"kind": "tr\n' + good, encoding="utf-8")
    with pytest.raises(MyGPT2Error, match=r"metrics.jsonl, line 1: not a JSON row"):
        load_run(run)


def test_the_command_prints_the_table_and_writes_the_picture(tmp_path, capsys):
    a = write_run(tmp_path / "a", [(2, 3.0, 1.5), (4, 2.5, 1.2)], config={"lr": 1e-3})
    b = write_run(tmp_path / "b", [(2, 3.2, 1.6), (4, 2.9, 1.4)], config={"lr": 3e-3})
    png = tmp_path / "c.png"
    assert main(["compare", str(a), str(b), f"--out={png}", "--target=3"]) == 0
    out = capsys.readouterr().out
    assert "time to 3.0000" in out and "config differences:" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["compare", str(a), str(tmp_path)]) == 2
    assert f"'{tmp_path}' has no metrics.jsonl" in capsys.readouterr().err
    assert main(["compare", str(a), "--target=low"]) == 2
    assert "--target must be a number" in capsys.readouterr().err
    assert main(["compare"]) == 2
