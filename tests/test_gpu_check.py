"""scripts/gpu_check.sh, which only a GPU machine runs in full: it parses, shellcheck finds
nothing (where shellcheck is installed), it holds the checks it promises, and on a machine
without two GPUs its two-rank step is skipped by name in the summary without failing."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.sh"


def test_the_script_parses():
    check = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck_finds_nothing():
    check = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout


def test_it_holds_each_check_under_a_timeout():
    text = SCRIPT.read_text(encoding="utf-8")
    steps = re.findall(r"run_step ([\w-]+) (\d+) ", text)
    names = [name for name, _ in steps]
    assert names == [
        "cuda-tests",
        "one-gpu",
        "one-gpu-resume",
        "two-ranks",
        "gpu-124m",
        "bench-train",
    ]
    assert all(0 < int(limit) <= 600 for _, limit in steps)  # one device call's limit
    assert 'timeout --signal=TERM --kill-after=30 "$limit"' in text
    # what each step runs: the CUDA-only tests, the evaluations, compile, torchrun, the bench
    assert "cuda\\.is_available|cuda\\.device_count" in text
    assert "--eval_data" in text and "--eval_tasks" in text and "--compile true" in text
    assert "torch.distributed.run --standalone --nproc_per_node 2" in text
    assert "benchmarks/bench_train.py --shapes 124M" in text
    assert "--n_layers 12 --n_heads 12 --n_emb 768 --T 1024" in text and "bfloat16" in text


def test_the_test_files_it_runs_are_the_ones_that_need_cuda():
    pattern = re.compile(r"cuda\.is_available|cuda\.device_count")
    found = sorted(
        p.name for p in (REPO / "tests").glob("test_*.py") if pattern.search(p.read_text())
    )
    assert "test_cuda.py" in found


@pytest.mark.skipif(torch.cuda.device_count() >= 2, reason="this machine has two GPUs")
def test_without_two_gpus_the_two_rank_step_is_skipped_by_name(tmp_path):
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "GPU_CHECK_ONLY": "two-ranks",
        "GPU_CHECK_DIR": str(tmp_path),
    }
    run = subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=120
    )
    assert run.returncode == 0, run.stdout + run.stderr
    summary = run.stdout.split("gpu_check summary")[1]
    gpus = torch.cuda.device_count()
    assert re.search(rf"two-ranks\s+SKIP\s+0s\s+needs 2 GPUs, this machine has {gpus}", summary)
    assert (tmp_path / "tasks_a.jsonl").is_file() and (tmp_path / "held_out.txt").is_file()
