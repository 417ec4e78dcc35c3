"""bf16 weights packed once for oneDNN, for one-token steps on CPUs with native bf16.

oneDNN's bf16 matmul reorders a plain weight into its blocked layout at every call. In training
the reorder is small beside the product; when generating, each step multiplies one row by every
weight, and the reorder costs more than the product. Packed once (`mygpt2.generate`'s
`GenerationWeights`: per generation, or once for all of a server's), the product reads the
weight at memory speed, half of float32's bytes: GPT-2 124M generates about twice as
many tokens per second as in float32 (benchmarks/bench_generate.py, docs/BENCHMARKS.md).

    if can_pack(weight):
        packed = pack_weight(weight.t())        # (out, in), bf16
        y = packed_linear(x, packed, bias)      # x @ weight + bias

The packed kernels need AVX-512 BF16 or AMX; elsewhere `can_pack` says no and the plain path
runs. No gradient flows through a packed weight: it is for inference only.
"""

from __future__ import annotations

import torch

from mygpt2.runtime import PACKED_BF16_FLAGS, native_bf16_flag


def can_pack(weight: torch.Tensor) -> bool:
    """Whether weights like `weight` gain from packing: bf16 on an x86 CPU with native bf16."""
    return (
        weight.device.type == "cpu"
        and weight.dtype == torch.bfloat16
        and torch.backends.mkldnn.is_available()
        and native_bf16_flag() in PACKED_BF16_FLAGS
    )


def pack_weight(weight_out_in: torch.Tensor) -> torch.Tensor:
    """A bf16 (out, in) matrix in oneDNN's blocked layout (for one row at a time), for
    `packed_linear`."""
    return torch.ops.mkldnn._reorder_linear_weight(weight_out_in.contiguous(), 1)


def packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`x @ W + bias` for a weight packed by `pack_weight` (no gradients flow through it)."""
    # oneDNN takes (..., in) as it is: no reshapes around it, which cost as much as the
    # product itself for the small weights of a one-token step
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
