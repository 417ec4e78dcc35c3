"""Where a run executes: device and dtype resolution, autocast, processes, stop requests."""

from __future__ import annotations

import os
import signal
import warnings
from pathlib import Path

import pytest
import torch

from mygpt2.errors import MyGPT2Error
from mygpt2.runtime import (
    Distributed,
    StopRequest,
    autocast,
    choose_dtype,
    compile_problem,
    cpu_flags,
    measure_matmul_flops,
    pick_device,
    pick_dtype,
)


def test_cpu_device_and_dtypes(monkeypatch):
    monkeypatch.setenv("MYGPT2_CPU_FLAGS", "fpu avx2 avx512f avx512_bf16")
    cpu = pick_device("cpu")
    assert cpu == torch.device("cpu")
    assert pick_dtype("float32", cpu) == torch.float32
    assert pick_dtype("bfloat16", cpu) == torch.bfloat16
    with pytest.raises(MyGPT2Error, match="float16 is for GPUs"):
        pick_dtype("float16", cpu)
    with pytest.raises(MyGPT2Error, match="unknown device 'tpu9'"):
        pick_device("tpu9")


@pytest.mark.parametrize(
    "flags, dtype, why",
    [
        ("fpu sse avx2 avx512f avx512_bf16", torch.bfloat16, "native bf16 (avx512_bf16)"),
        ("fpu avx2 amx_tile amx_bf16", torch.bfloat16, "native bf16 (amx_bf16)"),
        ("fp asimd bf16 i8mm", torch.bfloat16, "native bf16 (bf16)"),  # an Arm CPU's Features
        ("fpu sse avx2 avx512f", torch.float32, "no native bf16"),
        ("", torch.float32, "no native bf16"),
    ],
)
def test_auto_is_bf16_exactly_on_cpus_with_native_bf16(monkeypatch, flags, dtype, why):
    monkeypatch.setenv("MYGPT2_CPU_FLAGS", flags)
    choice = choose_dtype("auto", torch.device("cpu"))
    assert choice.dtype == dtype and why in choice.reason
    assert str(choice).startswith(str(dtype).removeprefix("torch.") + " (auto: ")


def test_with_cpu_auto_bf16_off_auto_names_the_flag_and_stays_float32(monkeypatch):
    monkeypatch.setattr("mygpt2.runtime.CPU_AUTO_BF16", False)
    monkeypatch.setenv("MYGPT2_CPU_FLAGS", "avx2 avx512f avx512_bf16")
    choice = choose_dtype("auto", torch.device("cpu"))
    assert choice.dtype == torch.float32
    assert "native bf16 (avx512_bf16): --dtype bfloat16" in choice.reason


def test_auto_generates_in_bf16_only_where_weights_can_be_packed(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setenv("MYGPT2_CPU_FLAGS", "avx512f avx512_bf16")
    choice = choose_dtype("auto", cpu, generation=True)
    assert choice.dtype == torch.bfloat16 and "packed bf16 weights" in choice.reason
    monkeypatch.setenv("MYGPT2_CPU_FLAGS", "fp asimd bf16")  # Arm: no packed oneDNN kernels
    choice = choose_dtype("auto", cpu, generation=True)
    assert choice.dtype == torch.float32 and "one-token steps" in choice.reason
    monkeypatch.setenv("MYGPT2_CPU_FLAGS", "avx2")
    assert pick_dtype("auto", cpu, generation=True) == torch.float32
    assert pick_dtype("bfloat16", cpu, generation=True) == torch.bfloat16


def test_cpu_flags_are_read_from_proc_cpuinfo(monkeypatch):
    monkeypatch.delenv("MYGPT2_CPU_FLAGS")
    info = Path("/proc/cpuinfo")
    if not info.exists():
        assert cpu_flags() == set()
        return
    lines = info.read_text(errors="replace").splitlines()
    line = next((x for x in lines if x.split(":")[0].strip() in ("flags", "Features")), "")
    assert cpu_flags() == set(line.partition(":")[2].split())


def test_bf16_on_a_cpu_without_it_runs_with_a_warning(monkeypatch):
    monkeypatch.setenv("MYGPT2_CPU_FLAGS", "fpu avx2")
    with pytest.warns(UserWarning, match="emulates it, many times slower"):
        choice = choose_dtype("bfloat16", torch.device("cpu"))
    assert choice.dtype == torch.bfloat16 and "emulated" in choice.reason
    monkeypatch.setenv("MYGPT2_CPU_FLAGS", "avx512_bf16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # native: no warning
        assert choose_dtype("bfloat16", torch.device("cpu")).reason == "as asked"


def test_float16_on_a_cpu_is_refused_with_the_reason():
    with pytest.raises(MyGPT2Error, match=r"no fast fp16 matmuls.*use bfloat16 or float32"):
        choose_dtype("float16", torch.device("cpu"))


def test_compile_problem_names_the_missing_compiler_or_headers(monkeypatch):
    import sysconfig

    import torch._inductor.cpp_builder as cpp_builder

    def no_compiler():
        raise RuntimeError("no working C++ compiler found")

    cpu = torch.device("cpu")
    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", no_compiler)
    assert "no C++ compiler was found" in compile_problem(cpu)
    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", lambda: "g++")
    monkeypatch.setattr(sysconfig, "get_paths", lambda: {"include": "/nonexistent/include"})
    assert "/nonexistent/include/Python.h is missing" in compile_problem(cpu)


def test_compile_without_a_toolchain_trains_uncompiled_with_a_warning(
    tmp_path, monkeypatch, capsys
):
    from mygpt2.cli import main

    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 200, encoding="utf-8")
    monkeypatch.setenv("MYGPT2_CPU_FLAGS", "avx512_bf16")
    monkeypatch.setattr("mygpt2.runtime.CPU_AUTO_BF16", True)
    monkeypatch.setattr(
        "mygpt2.run_setup.compile_problem", lambda device: "no C++ compiler was found"
    )
    tok = tmp_path / "tok.json"
    assert main(["tokenizer", "train", "--data", str(text), "--vocab_size", "260",
                 "--tokenizer_path", str(tok)]) == 0  # fmt: skip
    flags = [f"--data={text}", f"--tokenizer_path={tok}", f"--out_dir={tmp_path / 'run'}",
             f"--cache_dir={tmp_path / 'cache'}", "--n_layers=1", "--n_heads=2", "--n_emb=32",
             "--T=16", "--batch_size=2", "--macro_batch_size=2", "--max_steps=2",
             "--eval_interval=2", "--eval_batches=1", "--device=cpu", "--compile=true"]  # fmt: skip
    assert main(["train", *flags]) == 0
    out = capsys.readouterr()
    said = out.out + out.err
    assert "no C++ compiler was found; training without --compile" in said
    assert "dtype bfloat16 (auto: this CPU has native bf16 (avx512_bf16))" in said


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
    assert measure_matmul_flops(sizes=(64, 32), seconds=0.01) > 0
    assert torch.equal(torch.get_rng_state(), state)  # exact resume depends on it


def test_more_threads_than_cores_are_lowered_with_a_one_line_warning(monkeypatch):
    """A thread count above this process's cores (set before, as a script or OMP_NUM_THREADS
    can) is lowered by `pick_device` to the cores, once, saying what was asked and what is
    used; under torchrun the cores are split over LOCAL_WORLD_SIZE processes."""
    import warnings

    import torch

    from mygpt2.runtime import available_cores, pick_device

    cores = available_cores()
    before = torch.get_num_threads()
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        torch.set_num_threads(cores + 3)
        with pytest.warns(UserWarning) as caught:
            pick_device("cpu")
        assert len(caught) == 1
        message = str(caught[0].message)
        assert f"{cores + 3} PyTorch threads on {cores} cores: using {cores}" in message
        assert torch.get_num_threads() == cores
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # fits now: no second warning
            pick_device("cpu")
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(2 * cores))  # more processes than cores
        with pytest.warns(UserWarning, match="using 1;"):
            pick_device("cpu")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_a_thread_flag_above_the_cores_is_lowered_with_a_warning():
    from mygpt2.runtime import available_cores, threads_within_cores

    cores = available_cores()
    with pytest.warns(
        UserWarning, match=rf"--threads {cores + 5} on {cores} cores: using {cores};"
    ):
        assert threads_within_cores(cores + 5, "--threads") == cores
    assert threads_within_cores(cores, "--threads") == cores  # fits: as asked, no warning
