"""Where a run executes: device and dtype resolution, autocast, processes, stop requests."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from mygpt2.errors import MyGPT2Error
from mygpt2.runtime import (
    Distributed,
    StopRequest,
    autocast,
    measure_matmul_flops,
    pick_device,
    pick_dtype,
)


def test_cpu_device_and_dtypes():
    cpu = pick_device("cpu")
    assert cpu == torch.device("cpu")
    assert pick_dtype("auto", cpu) == torch.float32
    assert pick_dtype("bfloat16", cpu) == torch.bfloat16
    with pytest.raises(MyGPT2Error, match="float16 is for GPUs"):
        pick_dtype("float16", cpu)
    with pytest.raises(MyGPT2Error, match="unknown device 'tpu9'"):
        pick_device("tpu9")


def test_autocast_is_a_no_op_for_float32_only():
    cpu = torch.device("cpu")
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast(cpu, torch.float32):
        assert (a @ b).dtype == torch.float32
    with autocast(cpu, torch.bfloat16):
        assert (a @ b).dtype == torch.bfloat16


def test_alone_is_rank_0_of_1(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    d = Distributed.from_env("cpu")
    assert (d.rank, d.world_size, d.enabled, d.is_main) == (0, 1, False, True)
    d.barrier()  # no process group: nothing to wait for
    d.close()


def test_stop_request_turns_a_signal_into_a_flag():
    before = signal.getsignal(signal.SIGTERM)
    with StopRequest() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):  # a second one means "now"
            os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) == before  # handlers restored


def test_measured_matmul_rate_leaves_the_global_rng_alone():
    torch.manual_seed(0)
    state = torch.get_rng_state()
    assert measure_matmul_flops(n=64, seconds=0.01) > 0
    assert torch.equal(torch.get_rng_state(), state)  # exact resume depends on it
