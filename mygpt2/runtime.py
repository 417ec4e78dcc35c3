"""Where and how a run executes: device, precision, processes, and who prints.

- `pick_device` resolves `device = auto` to CUDA, then MPS, then CPU, and caps PyTorch's
  CPU threads at this process's share of the cores (`fit_threads`, with a one-line warning):
  OMP_NUM_THREADS above the cores makes every parallel region wait for a descheduled thread.
- `choose_dtype` resolves `dtype = auto` and says why: bf16 on GPUs that support it (fp16
  with a GradScaler otherwise), fp16 autocast on MPS; on a CPU bf16 where the CPU has native
  bf16 instructions (AVX-512 BF16, AMX, Arm BF16: read from /proc/cpuinfo at run time) while
  `CPU_AUTO_BF16` is on (it is; off, the banner suggests --dtype bfloat16), and float32
  elsewhere, since emulated bf16 is far slower.
  bf16 asked for on a CPU without them runs, with a warning; fp16 on a CPU is refused.
  Training (autocast), evaluation and sampling (weights) all take this one choice.
- `compile_problem` says what `torch.compile` would miss here (a C++ compiler, Python's
  headers, Triton), so a run can fall back with a warning instead of an inductor traceback.
- `keep_freed_memory` stops glibc from handing large freed blocks back to the kernel: a
  training step frees and reallocates the same (vocab, C) buffers every step, and each fresh
  mapping costs a page fault per 4 KiB, about a fifth of a 124M bf16 step on a CPU.
- `Distributed` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) and starts the
  process group: NCCL on CUDA, gloo on CPU. Only rank 0 prints, logs, plots and saves
  (`Distributed.is_main`); the training loop's printing goes through `metrics.Reporter`.
- Collectives go through `all_reduce`, `all_gather_object` and `barrier` here, nowhere else.
  `all_reduce` takes the run's device and refuses a tensor on another device type: NCCL
  reduces CUDA tensors only, so a CPU tensor fails there ("No backend type associated with
  device type cpu") at the first collective of a multi-GPU run, while the gloo runs that the
  tests can afford on a CPU accept it. Checked on every call, process group or not, a
  misplaced tensor fails in every single-process test whose device is not the CPU, and in a
  unit test that names a CUDA device without having one.
- `peak_flops` knows the dense bf16/fp32 peaks of common GPUs, for MFU; on a CPU it measures
  the matmul rate once, since no table can know it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import sysconfig
import time
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist

from mygpt2.errors import MyGPT2Error, RunError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Whether `auto` trains in bf16 on CPUs with native bf16: on since bf16's validation loss was
# shown within 0.02 of fp32's after equal steps (`bench_train.py --loss-check`, 2026-11-29:
# byte level, 3 seeds x 600 steps, every seed within 0.005; GPT-2's vocabulary, 1000 steps,
# 0.014; docs/BENCHMARKS.md). Off, `auto` means float32 on every CPU.
CPU_AUTO_BF16 = True


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def threads_within_cores(asked: int, what: str) -> int:
    """A thread count that was asked for (`what` names where, e.g. a flag), lowered to the
    cores this process may use, with a one-line warning saying so when it had to."""
    cores = available_cores()
    if asked <= cores:
        return asked
    warnings.warn(
        f"{what} {asked} on {cores} cores: using {cores}; threads beyond the cores wait on "
        "each other at every parallel step",
        stacklevel=2,
    )
    return cores


def fit_threads(local_processes: int = 1) -> str | None:
    """Cap PyTorch's intra-op threads at this process's share of the cores (the cores split
    over `local_processes` processes on this machine). Returns the warning it issued (what was
    asked, what is used instead), or None when the count already fits."""
    cores = available_cores()
    share = max(1, cores // max(1, local_processes))
    asked = torch.get_num_threads()
    if asked <= share:
        return None
    torch.set_num_threads(share)
    source = os.environ.get("OMP_NUM_THREADS")
    origin = f" (OMP_NUM_THREADS={source})" if source else ""
    where = (
        f"{cores} cores" if local_processes <= 1 else f"{cores} cores / {local_processes} processes"
    )
    message = (
        f"{asked} PyTorch threads{origin} on {where}: using {share}; threads beyond the "
        "cores wait on each other at every parallel step"
    )
    warnings.warn(message, stacklevel=2)
    return message


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """Resolve a device name; `auto` prefers CUDA, then MPS, then CPU. Also fits PyTorch's
    CPU threads to this process's cores (`fit_threads`; torchrun's LOCAL_WORLD_SIZE processes
    share them), warning when it has to lower them."""
    fit_threads(int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise MyGPT2Error(f"unknown device '{name}': use auto, cpu, cuda, cuda:N or mps.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MyGPT2Error("device cuda was asked for, but PyTorch sees no CUDA GPU here.")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise MyGPT2Error("device mps was asked for, but this PyTorch has no MPS support here.")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


@dataclass(frozen=True)
class DtypeChoice:
    """The compute dtype a run uses, and why (for the start banner)."""

    dtype: torch.dtype
    reason: str

    def __str__(self) -> str:
        return f"{str(self.dtype).removeprefix('torch.')} ({self.reason})"


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (x86 `flags`, Arm `Features`); empty where
    there is no such file (macOS, Windows). `MYGPT2_CPU_FLAGS` (space-separated), when set,
    is taken instead: the test suite sets it empty, so `auto` means float32 on every machine."""
    override = os.environ.get("MYGPT2_CPU_FLAGS")
    if override is not None:
        return set(override.split())
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        pass
    return set()


# CPU flags under which oneDNN has packed bf16 matmul kernels (mygpt2.packing)
PACKED_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def native_bf16_flag() -> str | None:
    """The CPU feature that runs bf16 matmuls natively (avx512_bf16, amx_bf16, Arm bf16), or
    None: without one, PyTorch emulates bf16 and it is far slower than float32."""
    flags = cpu_flags()
    for flag in ("amx_bf16", "avx512_bf16", "bf16"):
        if flag in flags:
            return flag
    return None


def choose_dtype(name: str, device: torch.device, generation: bool = False) -> DtypeChoice:
    """Resolve the compute dtype and say why; `auto`: bf16 on capable GPUs and (with
    `CPU_AUTO_BF16`) on CPUs with native bf16, fp16 on other GPUs and on MPS, else float32.

    With `generation` (weights for one token at a time) `auto` on a CPU is bf16 where oneDNN
    has packed bf16 kernels (`PACKED_BF16_FLAGS`, see `mygpt2.packing`): about 2x float32's
    tokens/s. Elsewhere it is float32: a plain bf16 vector-matrix product repacks the weights
    at every call and comes out slower than float32's (docs/BENCHMARKS.md, Generation)."""
    if name == "auto" and generation and device.type == "cpu":
        flag = native_bf16_flag()
        if flag in PACKED_BF16_FLAGS:
            return DtypeChoice(
                torch.bfloat16, f"auto: this CPU has native bf16 ({flag}); packed bf16 weights"
            )
        return DtypeChoice(torch.float32, "auto: one-token steps on this CPU are faster in fp32")
    if name == "auto":
        if device.type == "cuda":
            if torch.cuda.is_bf16_supported():
                return DtypeChoice(torch.bfloat16, "auto: this GPU supports bf16")
            return DtypeChoice(torch.float16, "auto: this GPU has no bf16; fp16 with loss scaling")
        if device.type == "mps":  # autocast with a gradient scaler, as on older GPUs
            return DtypeChoice(torch.float16, "auto: fp16 on MPS")
        flag = native_bf16_flag()
        if flag and CPU_AUTO_BF16:
            return DtypeChoice(torch.bfloat16, f"auto: this CPU has native bf16 ({flag})")
        if flag:
            return DtypeChoice(
                torch.float32,
                f"auto; this CPU has native bf16 ({flag}): --dtype bfloat16 trains up to 3x faster",
            )
        return DtypeChoice(
            torch.float32, "auto: this CPU has no native bf16 (AVX-512 BF16 or AMX); fp32 is faster"
        )
    dtype = DTYPES[name]
    if device.type == "cpu" and dtype == torch.float16:
        raise MyGPT2Error(
            "dtype float16 is for GPUs: CPUs have no fast fp16 matmuls and PyTorch's CPU "
            "autocast has no loss scaling for it. On a CPU use bfloat16 or float32 (or auto)."
        )
    if device.type == "cpu" and dtype == torch.bfloat16 and native_bf16_flag() is None:
        warnings.warn(
            "dtype bfloat16 on a CPU without native bf16 instructions (AVX-512 BF16 or AMX): "
            "PyTorch emulates it, many times slower than float32. It runs as asked; "
            "--dtype auto picks float32 here.",
            stacklevel=2,
        )
        return DtypeChoice(dtype, "as asked; emulated on this CPU, slow")
    return DtypeChoice(dtype, "as asked")


def pick_dtype(name: str, device: torch.device, generation: bool = False) -> torch.dtype:
    """The compute dtype `choose_dtype` picks (without the reason)."""
    return choose_dtype(name, device, generation).dtype


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed-precision context for forward passes; a no-op for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 when run alone)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device_name: str) -> Distributed:
        """Join the process group when launched by torchrun."""
        if "RANK" not in os.environ:
            return cls()
        d = cls(
            rank=int(os.environ["RANK"]),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
            world_size=int(os.environ["WORLD_SIZE"]),
        )
        if d.world_size > 1 and not dist.is_initialized():
            use_cuda = torch.cuda.is_available() and (
                device_name == "auto" or device_name.startswith("cuda")
            )
            if use_cuda:
                torch.cuda.set_device(d.local_rank)
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        return d

    def barrier(self) -> None:
        if self.enabled:
            barrier()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


# ----------------------------------------------------------------------------- collectives

REDUCE_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}


def _joined() -> bool:
    """Whether this process is in a process group of more than one."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def check_collective(tensor: torch.Tensor, device: torch.device) -> None:
    """Refuse a tensor that is not on the run's device type (see the module's docstring)."""
    if tensor.device.type != torch.device(device).type:
        raise RunError(
            f"a collective was given a tensor on {tensor.device.type}, but this run's "
            f"processes communicate on {torch.device(device).type}: every tensor summed over "
            "processes must be on the run's device (a bug in mygpt2; please report it)."
        )


def all_reduce(tensor: torch.Tensor, device: torch.device, op: str = "sum") -> torch.Tensor:
    """`tensor` reduced over all processes in place (`op`: sum or max) and returned; alone,
    returned as it is. It must be on the run's `device` (checked either way)."""
    check_collective(tensor, device)
    if _joined():
        dist.all_reduce(tensor, op=REDUCE_OPS[op])
    return tensor


def all_gather_object(obj: object) -> list[object]:
    """Every process's `obj` (picklable), in rank order; `[obj]` alone."""
    if not _joined():
        return [obj]
    gathered: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier() -> None:
    """Wait until every process gets here (nothing to wait for alone)."""
    if _joined():
        dist.barrier()


# Dense peak FLOP/s (bf16/fp16 tensor cores, without sparsity) of GPUs people train on.
GPU_PEAK_BF16 = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "A10": 125e12,
    "L40": 181e12,
    "L4": 121e12,
    "4090": 165e12,
    "3090": 71e12,
    "V100": 125e12,
    "T4": 65e12,
}


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """Peak FLOP/s of one device for MFU, or None when unknown."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peak in GPU_PEAK_BF16.items():
            if key in name:
                return peak if dtype != torch.float32 else peak / 2  # TF32 is half the rate
        return None
    if device.type == "cpu":
        return measure_matmul_flops(dtype)
    return None


def measure_matmul_flops(
    dtype: torch.dtype = torch.float32, sizes: tuple[int, ...] = (1024, 2048), seconds: float = 0.1
) -> float:
    """Measured square-matmul FLOP/s on this CPU, the best of `sizes` (n x n times n x n),
    `seconds` in all: the practical peak MFU is judged against. More than one size, since
    one can miss threads: with AMX, oneDNN ran bf16 n = 1024 on one of two threads
    (1,334 GFLOP/s on two, 1,422 on one) and n = 2048 on both (2,534; 2026-12-06).
    0.1 s: four measurements each at 0.1 and 0.3 s spread alike (about +-5% on a 2-core
    machine), and every training run pays it at its start."""
    gen = torch.Generator().manual_seed(0)  # leave the global RNG alone (exact resume)
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, generator=gen).to(dtype)
        b = torch.randn(n, n, generator=gen).to(dtype)
        a @ b  # warm-up
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / len(sizes):
            a @ b
            count += 1
        best = max(best, 2 * n**3 * count / (time.perf_counter() - start))
    return best


def compile_problem(device: torch.device) -> str | None:
    """What `torch.compile` needs and this machine lacks (a sentence), or None when it can
    work: a C++ compiler and Python's headers for CPU kernels, Triton for GPU kernels."""
    if device.type == "cpu":
        try:
            from torch._inductor.cpp_builder import get_cpp_compiler

            get_cpp_compiler()
        except Exception:  # inductor's own search: CXX, then g++ / clang++ on PATH
            return (
                "torch.compile builds C++ kernels for the CPU and no C++ compiler was found "
                "(install g++ or clang++, or set CXX)"
            )
        include = sysconfig.get_paths().get("include", "")
        if not os.path.exists(os.path.join(include, "Python.h")):
            return (
                f"torch.compile builds C++ kernels against Python's headers and {include}/Python.h "
                "is missing (install your Python's development package, e.g. python3-dev)"
            )
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return "torch.compile builds GPU kernels with Triton, which is not installed"
    return None


def keep_freed_memory() -> bool:
    """Keep freed memory in this process for reuse (glibc only): large blocks come from the
    heap instead of fresh mappings, and the heap is not trimmed. The resident size stays near
    its peak, as with a GPU's caching allocator. Returns whether the setting took."""
    if sys.platform != "linux":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4  # from glibc's malloc.h
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**30))
    except (OSError, AttributeError):  # musl, or no libc.so.6
        return False


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each step (then saves and exits)."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C means "now"
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
