"""Where and how a run executes: device, precision, processes, and who prints.

- `pick_device` resolves `device = auto` to CUDA, then MPS, then CPU.
- `pick_dtype` resolves `dtype = auto`: bf16 on GPUs that support it (fp16 with a GradScaler
  otherwise), fp16 autocast on MPS, float32 on CPUs. bf16 autocast on a CPU is available as
  `dtype = bfloat16`; it is not the automatic choice because it only pays on CPUs with
  AVX-512 BF16 or AMX, and without them it is far slower than fp32 (docs/BENCHMARKS.md).
- `Distributed` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) and starts the
  process group: NCCL on CUDA, gloo on CPU. Only rank 0 prints, logs, plots and saves
  (`Distributed.is_main`); the training loop's printing goes through `metrics.Reporter`.
- `peak_flops` knows the dense bf16/fp32 peaks of common GPUs, for MFU; on a CPU it measures
  the matmul rate once, since no table can know it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from mygpt2.errors import MyGPT2Error

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """Resolve a device name; `auto` prefers CUDA, then MPS, then CPU."""
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


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """Resolve the compute dtype; `auto`: bf16 on capable GPUs, else fp16 on GPUs and MPS, fp32 on
    CPUs."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "mps":
            return torch.float16  # autocast with a gradient scaler, as on older GPUs
        return torch.float32
    dtype = DTYPES[name]
    if device.type == "cpu" and dtype == torch.float16:
        raise MyGPT2Error("dtype float16 is for GPUs; on a CPU use bfloat16 or float32.")
    return dtype


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
            dist.barrier()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


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
    dtype: torch.dtype = torch.float32, n: int = 1024, seconds: float = 0.3
) -> float:
    """Measured square-matmul FLOP/s on this CPU: the practical peak MFU is judged against."""
    gen = torch.Generator().manual_seed(0)  # leave the global RNG alone (exact resume)
    a = torch.randn(n, n, generator=gen).to(dtype)
    b = torch.randn(n, n, generator=gen).to(dtype)
    a @ b  # warm-up
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - start)


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
