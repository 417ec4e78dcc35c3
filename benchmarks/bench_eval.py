"""Evaluation speed: `mygpt2.evaluation.score_stream` against a plain `transformers` loop that
scores the same windows.

Both score the same sliding windows (`sliding_windows`: T = 1024 inputs, each scoring its last
`stride` targets) of one token stream, on the same random-initialised weights (built here,
saved with Hugging Face's `save_pretrained`, loaded by both; nothing is downloaded):

- HF loop: the perplexity guide's loop, one window at a time: `GPT2LMHeadModel(input_ids)`
  (the logits of every position), then `F.cross_entropy` on the window's scored positions;
- HF batched: the same, `--batch` windows per forward pass (a fairer reference);
- mygpt2: `score_stream(model, stream, stride=..., batch_size=--batch)`;
- mygpt2 bf16: the same under bf16 autocast (`--dtype bfloat16`), on CPUs with native
  bf16 only (AVX-512 BF16, AMX); its mean loss differs from fp32's by bf16's rounding.

    python benchmarks/bench_eval.py                           # small and 124M, stride T and T/2
    python benchmarks/bench_eval.py --shapes 124M --windows 4 --runs 3
    python benchmarks/bench_eval.py --threads 1 --clock cpu     # steadier on a busy machine

Throughput is scored tokens per second; figures are medians over `--runs` timed runs after one
warm-up, the runners taking turns run by run so that load on a shared machine hits all alike.
The summed losses of the runners are printed too: they must agree.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from mygpt2.evaluation.text import TextStream, score_stream, sliding_windows
from mygpt2.hf import from_pretrained
from mygpt2.runtime import native_bf16_flag, threads_within_cores

SHAPES = {
    "small": dict(n_layer=4, n_head=4, n_embd=128),
    "124M": dict(n_layer=12, n_head=12, n_embd=768),
}
VOCAB, T, EOT = 50257, 1024, 50256
CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter


def build_hf(shape: dict[str, int], directory: Path):
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(**shape, n_positions=T, vocab_size=VOCAB)
    hf = transformers.GPT2LMHeadModel(config).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf.save_pretrained(directory)
    return hf


def make_stream(windows: int, stride: int) -> TextStream:
    """A stream of random text ids (no end-of-text inside) that makes exactly `windows`."""
    n = T + (windows - 1) * stride  # predictions
    ids = np.random.default_rng(0).integers(0, EOT, n + 1)
    ids[0] = EOT
    return TextStream(ids.astype(np.int64), EOT, n, n, 1)


def hf_runner(hf, stream: TextStream, stride: int, batch: int) -> Callable[[], float]:
    tokens = torch.from_numpy(stream.tokens)
    windows = sliding_windows(len(tokens) - 1, T, stride)

    def run() -> float:
        total = 0.0
        with torch.inference_mode():
            for b in range(0, len(windows), batch):
                group = windows[b : b + batch]
                idx = torch.stack([tokens[w.start : w.end] for w in group])
                targets = torch.stack([tokens[w.start + 1 : w.end + 1] for w in group])
                logits = hf(idx).logits  # (B, T, vocab)
                for k, w in enumerate(group):
                    total += F.cross_entropy(
                        logits[k, -w.scored :], targets[k, -w.scored :], reduction="sum"
                    ).item()
        return total

    return run


def bench(shape_name: str, stride: int, windows: int, batch: int, runs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        hf = build_hf(SHAPES[shape_name], Path(tmp))
        ours = from_pretrained(tmp).eval()
    stream = make_stream(windows, stride)
    runners = {
        "HF loop": hf_runner(hf, stream, stride, 1),
        f"HF batched {batch}": hf_runner(hf, stream, stride, batch),
        "mygpt2": lambda: score_stream(ours, stream, stride=stride, batch_size=batch).nats,
    }
    if native_bf16_flag():  # --dtype bfloat16 on such a CPU; emulated bf16 elsewhere is slow
        runners["mygpt2 bf16"] = lambda: (
            score_stream(ours, stream, stride=stride, batch_size=batch, dtype=torch.bfloat16).nats
        )
    times: dict[str, list[float]] = {name: [] for name in runners}
    nats = {name: fn() for name, fn in runners.items()}  # warm-up, and the losses to compare
    for _ in range(runs):
        for name, fn in runners.items():
            start = clock()
            fn()
            times[name].append(clock() - start)
    scored = stream.text_tokens
    base = scored / statistics.median(times["HF loop"])
    print(
        f"\n{shape_name}, stride {stride}: {len(sliding_windows(scored, T, stride))} windows of "
        f"{T}, {scored:,} scored tokens, batch {batch}"
    )
    print(
        f"  {'runner':<16} {'tokens/s':>10} {'vs HF loop':>11} {'spread (s)':>16} {'mean loss':>10}"
    )
    for name in runners:
        rate = scored / statistics.median(times[name])
        spread = f"{min(times[name]):.2f}-{max(times[name]):.2f}"
        loss = nats[name] / scored
        print(f"  {name:<16} {rate:>10,.1f} {rate / base:>10.2f}x {spread:>16} {loss:>10.6f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--strides", nargs="+", type=int, default=[T, T // 2])
    parser.add_argument("--windows", type=int, default=0, help="default: 16 small, 4 124M")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--clock", choices=list(CLOCK), default="wall", help="cpu: this process's CPU time"
    )
    args = parser.parse_args()
    global clock
    clock = CLOCK[args.clock]
    if args.threads:
        torch.set_num_threads(threads_within_cores(args.threads, "--threads"))
    import transformers

    print(
        f"{platform.node()}: {os.cpu_count()} CPUs ({torch.backends.cpu.get_cpu_capability()}), "
        f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, "
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"{torch.get_num_threads()} threads, {args.clock} clock"
    )
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    for shape in args.shapes:
        for stride in args.strides:
            windows = args.windows or (16 if shape == "small" else 4)
            bench(shape, stride, windows, args.batch, args.runs)
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
