"""Collectives: one helper (`mygpt2.runtime`) that takes tensors on the run's device only,
checked without a GPU; a real all-reduce through it between two gloo processes; and no
`torch.distributed` collective called anywhere else in the package."""

from __future__ import annotations

import ast
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mygpt2.errors import RunError
from mygpt2.evaluation import during_training as run_evals
from mygpt2.evaluation.during_training import RunEvals, validation_bpb
from mygpt2.loss import IGNORE_INDEX
from mygpt2.runtime import all_gather_object, all_reduce, barrier, check_collective
from mygpt2.tokenizer import RegexTokenizer

PACKAGE = Path(__file__).resolve().parents[1] / "mygpt2"


def test_a_tensor_on_another_device_type_is_refused_naming_both():
    # what NCCL would meet at the first evaluation of a multi-GPU run, caught without one
    with pytest.raises(RunError, match=r"a tensor on cpu, but this run's processes .* on cuda"):
        all_reduce(torch.ones(2), torch.device("cuda", 0))
    with pytest.raises(RunError, match=r"on cpu, but .* on cuda"):
        check_collective(torch.ones(2), "cuda")
    with pytest.raises(RunError, match=r"on meta, but .* on cpu"):
        all_reduce(torch.ones(2, device="meta"), torch.device("cpu"))
    check_collective(torch.ones(2), torch.device("cpu"))  # the same type passes


def test_the_bpb_counts_are_summed_on_the_runs_device(monkeypatch):
    # validation_bpb under DDP must build its counts on the run's device (NCCL: CUDA). The
    # `meta` device stands in for a GPU here: a CPU tensor would be refused by the check
    seen = []

    def spy(tensor, device, op="sum"):
        check_collective(tensor, device)
        seen.append((tensor.device.type, torch.device(device).type, tensor.dtype))
        return torch.tensor([2 * 2, 2 * 3])  # as if a second rank held the same batches

    monkeypatch.setattr(run_evals, "all_reduce", spy)
    evals = RunEvals(
        tokenizer=RegexTokenizer(),
        token_bytes=torch.tensor([1, 2]),
        batch_size=1,
        device=torch.device("meta"),
    )
    batches = [(None, torch.tensor([[0, 1, IGNORE_INDEX]]))]  # 2 targets, 1 + 2 bytes
    got = validation_bpb(evals, batches, 1.5, distributed=True)
    assert seen == [("meta", "meta", torch.int64)]
    assert evals.val_counts == (4, 6)
    assert got == pytest.approx(1.5 * 4 / math.log(2) / 6, rel=1e-12)


def test_alone_the_collectives_are_identities():
    t = torch.tensor([1.0, 2.0])
    assert all_reduce(t, torch.device("cpu")) is t and t.tolist() == [1.0, 2.0]
    assert all_gather_object({"a": 1}) == [{"a": 1}]
    barrier()  # no process group: returns at once


TWO_RANKS = """
import json, math, os, sys, torch, torch.distributed as dist
from mygpt2.evaluation import during_training as run_evals
from mygpt2.errors import RunError
from mygpt2.loss import IGNORE_INDEX
from mygpt2.evaluation.during_training import RunEvals, validation_bpb
from mygpt2.runtime import all_gather_object, all_reduce, barrier
from mygpt2.tokenizer import RegexTokenizer
torch.set_num_threads(1)
rank = int(sys.argv[1])
dist.init_process_group("gloo", init_method=f"file://{sys.argv[3]}", rank=rank, world_size=2)
cpu = torch.device("cpu")
out = {}
out["sum"] = all_reduce(torch.tensor([rank + 1, 10 * (rank + 1)]), cpu).tolist()
out["max"] = all_reduce(torch.tensor([5.0 - 4 * rank, 1.0 + rank]), cpu, "max").tolist()
out["gathered"] = all_gather_object({"rank": rank})
try:
    all_reduce(torch.ones(1), torch.device("cuda"))
except RunError as e:
    out["refused"] = str(e)
# rank 0 holds targets [0, 1, 2] (1 + 2 + 0 bytes), rank 1 [1, 1] and a padding target
ys = [torch.tensor([[0, 1, 2]]), torch.tensor([[1, 1, IGNORE_INDEX]])]
evals = RunEvals(tokenizer=RegexTokenizer(), token_bytes=torch.tensor([1, 2, 0]), batch_size=1)
out["bpb"] = validation_bpb(evals, [(None, ys[rank])], 0.75, distributed=True)
out["counts"] = list(evals.val_counts)
barrier()
if rank == 0:
    with open(sys.argv[2], "w", encoding="utf-8") as fh:
        json.dump(out, fh)
barrier()
dist.destroy_process_group()
os._exit(0)  # gloo's threads may abort in C++ teardown after all work is done
"""


def test_two_gloo_processes_reduce_through_the_helper(tmp_path):
    out = tmp_path / "rank0.json"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", TWO_RANKS, str(rank), str(out), str(tmp_path / "rdv")],
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
    got = json.loads(out.read_text(encoding="utf-8"))
    assert got["sum"] == [1 + 2, 10 + 20]
    assert got["max"] == [5.0, 2.0]
    assert got["gathered"] == [{"rank": 0}, {"rank": 1}]
    assert "on cpu, but this run's processes communicate on cuda" in got["refused"]
    # 5 targets over both ranks, bytes 1 + 2 + 0 + 2 + 2 = 7
    assert got["counts"] == [5, 7]
    assert got["bpb"] == pytest.approx(0.75 * 5 / math.log(2) / 7, rel=1e-12)


def test_no_collective_is_called_outside_the_helper():
    # every all_reduce/broadcast/gather/barrier goes through mygpt2.runtime's helpers
    names = {
        "all_reduce",
        "all_gather",
        "all_gather_object",
        "broadcast",
        "broadcast_object_list",
        "reduce",
        "reduce_scatter",
        "gather",
        "scatter",
        "barrier",
        "send",
        "recv",
    }
    calls = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for func in [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]:
            for node in ast.walk(func):
                target = node.func if isinstance(node, ast.Call) else None
                if (
                    isinstance(target, ast.Attribute)
                    and target.attr in names
                    and isinstance(target.value, ast.Name)
                    and target.value.id == "dist"
                ):
                    calls.append((path.relative_to(PACKAGE).as_posix(), func.name))
    outside = {c for c in calls if c[0] != "runtime.py"}
    assert not outside
    assert ("runtime.py", "all_reduce") in calls  # the scan sees the helper's own call
