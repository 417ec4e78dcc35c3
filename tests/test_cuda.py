"""What only a GPU can check: the training step, a whole run (bf16, --compile, the run-time
evaluations), generation and the collectives on CUDA, and two NCCL ranks with evaluation.

Skipped, with the reason, where PyTorch sees no CUDA GPU (the two-rank test also where it
sees fewer than two). `scripts/gpu_check.sh` runs this file, with the other checks that need
a GPU, on the day one is available; its summary fails when anything here was skipped there.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from models import prompt_ids, tiny_gpt
from test_train import (
    DDP_RUNNER,
    RecordingSGD,
    make_corpus,
    tiny_args,
    tiny_config,
    tiny_model,
    uneven_batches,
    write_choices,
)

from mygpt2.checkpoint import load_checkpoint
from mygpt2.errors import RunError
from mygpt2.generate import generate
from mygpt2.runtime import all_reduce
from mygpt2.train import train, train_step

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda", 0)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shakespeare_path) -> dict[str, str]:
    return make_corpus(tmp_path_factory.mktemp("corpus"), shakespeare_path)


@pytest.fixture
def evals(tmp_path, shakespeare_path) -> dict[str, str]:
    """--eval_data (held-out text) and --eval_tasks (one multiple-choice file)."""
    held_out = tmp_path / "held_out.txt"
    held_out.write_text(shakespeare_path.read_text(encoding="utf-8")[-20_000:], encoding="utf-8")
    task = tmp_path / "choices.jsonl"
    write_choices(task)
    return {"eval_data": str(held_out), "eval_tasks": str(task)}


def test_the_step_on_cuda_equals_the_step_on_the_cpu():
    """Token-weighted accumulation over uneven micro-batches, float32, on both devices."""
    results, grads = {}, {}
    for device in ("cpu", "cuda"):
        model = tiny_model().to(device)
        opt = RecordingSGD(model.parameters(), lr=0.0)
        results[device] = train_step(model, opt, uneven_batches(), grad_clipping=1.0)
        grads[device] = [g.cpu() for g in opt.grads]
    assert results["cuda"].tokens == results["cpu"].tokens == 44
    assert results["cuda"].loss == pytest.approx(results["cpu"].loss, abs=1e-4)
    assert results["cuda"].grad_norm == pytest.approx(results["cpu"].grad_norm, rel=1e-3)
    for got, want in zip(grads["cuda"], grads["cpu"], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4)


def test_collectives_take_cuda_tensors_and_refuse_cpu_ones():
    t = torch.ones(3, device=CUDA)
    assert all_reduce(t, CUDA) is t  # alone: unchanged
    with pytest.raises(RunError, match="on cpu, but this run's processes communicate on cuda"):
        all_reduce(torch.ones(3), CUDA)


def test_greedy_generation_on_cuda_equals_the_cpu():
    model = tiny_gpt(seed=3)
    prompt = prompt_ids(model.config.vocab_size, 6)
    cpu = generate(model.eval(), [prompt], 12, temperature=0.0)
    gpu = generate(model.to(CUDA).eval(), [prompt], 12, temperature=0.0)
    assert gpu == cpu


def test_a_bf16_compiled_run_with_evaluations_trains_saves_and_resumes(corpus, evals, tmp_path):
    """The path a GPU user takes: bf16 autocast, --compile, val_bpb, eval_data and eval_tasks
    at each evaluation; the checkpoint resumes."""
    common = dict(device="cuda", dtype="bfloat16", compile="true", max_steps=8, eval_interval=4)
    first = train(tiny_config(corpus, tmp_path, stop_at=4, **common, **evals))
    assert first["step"] == 4
    resumed = train(tiny_config(corpus, tmp_path, resume="true", **common, **evals))
    assert resumed["step"] == 8
    rows = [r for r in resumed["history"] if r["kind"] == "eval"]
    assert [r["step"] for r in rows] == [4, 8]
    for row in rows:
        for key in ("val_loss", "val_bpb", "eval_data_loss", "eval_data_bpb", "acc/choices"):
            assert math.isfinite(row[key]), key
        assert row["n/choices"] == 3
    losses = [r["loss"] for r in resumed["history"] if r["kind"] == "train"]
    assert len(losses) == 8 and losses[-1] < losses[0]
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["step"] == 8
    assert all(v.device.type == "cpu" for v in ckpt["model"].values())  # loads anywhere


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_two_nccl_ranks_train_and_evaluate(corpus, evals, tmp_path):
    """The seed's own multi-GPU command, with the run-time evaluations: every collective
    takes a CUDA tensor under NCCL (a CPU one failed at the first evaluation)."""
    script = tmp_path / "runner.py"
    script.write_text(DDP_RUNNER, encoding="utf-8")
    out = tmp_path / "out.json"
    args = tiny_args(
        corpus,
        tmp_path / "run",
        device="cuda",
        max_steps=4,
        eval_interval=2,
        macro_batch_size=16,
        **evals,
    )
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    ddp = subprocess.run(
        [*torchrun, "--standalone", str(script), str(out), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=600,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "processes 2" in ddp.stdout
    got = json.loads(out.read_text(encoding="utf-8"))
    assert len(got["train"]) == 4 and [r["step"] for r in got["eval"]] == [2, 4]
    assert all(math.isfinite(r["val_bpb"]) and r["n/choices"] == 3 for r in got["eval"])
