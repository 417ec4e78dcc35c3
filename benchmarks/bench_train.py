"""Training throughput: our model + optimizer step against Hugging Face GPT2LMHeadModel.

Both sides run in this one process on the same shapes, batches and thread count, interleaved
step by step so that background load hits both alike; the median step time is reported. The
reference is a plain loop: `GPT2LMHeadModel(...)(input_ids, labels=...)`, `loss.backward()`,
`torch.optim.AdamW.step()`. Ours is one call of `mygpt2.train.train_step`, the training loop's
own step (token-weighted loss, gradient clipping, AdamW with `mygpt2.optim.make_optimizer`'s
decay groups), on a `mygpt2.model.GPT`; the compiled runners wrap that model in `torch.compile`,
as `mygpt2 train --compile true` does.

MFU is model FLOPs (`GPT.flops_per_token`, 6N + attention) per second against the machine's
measured matmul rate in the same dtype, not against a datasheet. bf16 rows run only where the
CPU has native bf16 (`runtime.native_bf16_flag`: AVX-512 BF16, AMX); elsewhere the script says
they were skipped and why.

Every runner, the reference included, runs with `runtime.keep_freed_memory()` on, as
`mygpt2 train` does on a CPU: so the ratios credit our step, not the allocator setting (which
speeds up the reference too).

    python benchmarks/bench_train.py                 # both shapes, fp32 and bf16, 1 and all threads
    python benchmarks/bench_train.py --shapes small  # just the small shape
    python benchmarks/bench_train.py --loss-check    # fp32 vs bf16 val loss on Tiny Shakespeare
    python benchmarks/bench_train.py --loss-check --loss-tokenizer gpt2 --loss-steps 1000
    python benchmarks/bench_train.py --threads 1     # one thread (a machine shared with others)
    python benchmarks/bench_train.py --threads 1 2 4 # each count in turn, and the scaling
    python benchmarks/bench_train.py --where         # and where our step's time goes

At each thread count the matmul rates are measured again (`runtime.measure_matmul_flops`),
and every runner's tokens/s is shown as a fraction of the rate in its dtype ("of rate"); for
our runners also the step's model FLOPs over the seconds the step spends in matmuls alone
("matmuls", from torch.profiler): the fraction the step would reach if everything else were
free. Then the scaling from the first thread count to the others, for each runner and for
the bare matmul rates.

The loss check's default is byte level, 600 steps, 3 seeds: there the runs are steady (seeds
within 0.01 of each other) and a 0.02 bar can be read. With GPT-2's vocabulary at 300 steps
they are not: fp32 seeds spread over 0.2 (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from mygpt2.config import Config, ModelConfig
from mygpt2.model import GPT
from mygpt2.optim import make_optimizer
from mygpt2.runtime import (
    cpu_flags,
    keep_freed_memory,
    measure_matmul_flops,
    native_bf16_flag,
    threads_within_cores,
)
from mygpt2.train import train_step

SHAPES = {
    "small": dict(n_layers=4, n_heads=4, n_emb=128, T=64, batch=12),
    "124M": dict(n_layers=12, n_heads=12, n_emb=768, T=256, batch=4),
}
VOCAB = 50257


def ours_step_fn(shape: dict, dtype: torch.dtype, compile: bool = False):
    cfg = Config()
    cfg.model = ModelConfig(
        n_layers=shape["n_layers"],
        n_heads=shape["n_heads"],
        n_emb=shape["n_emb"],
        T=shape["T"],
        vocab_size=VOCAB,
    )
    raw = GPT(cfg.model)
    opt = make_optimizer(raw, cfg, torch.device("cpu"))
    model = torch.compile(raw) if compile else raw

    def step(x, y):
        # the training loop's step: one micro-batch, clipped at 1.0 like the reference
        return train_step(model, opt, [(x, y)], dtype=dtype, grad_clipping=1.0).loss

    return raw, step


def hf_step_fn(shape: dict):
    hc = GPT2Config(
        n_layer=shape["n_layers"],
        n_head=shape["n_heads"],
        n_embd=shape["n_emb"],
        n_positions=shape["T"],
        vocab_size=VOCAB,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = GPT2LMHeadModel(hc)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)

    def step(x, y):
        loss = model(input_ids=x, labels=x).loss  # HF shifts the labels itself
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step


def step_matmul_seconds(step, x, y) -> float:
    """Seconds one step spends in matmuls (mm, addmm, bmm, from torch.profiler): what the
    step would take if everything else were free."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(x, y)
    names = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}
    return sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in names) / 1e6


def where_the_time_goes(step, x, y, steps: int = 2) -> dict[str, float]:
    """Seconds per step by part, from torch.profiler's op tree: each op's self time goes to the
    loss head, attention or the optimizer when it runs inside one (LinearCrossEntropy,
    CausalAttention, Optimizer.step), else to matmuls, casts and copies, or the rest
    (elementwise: norms, activations, residual adds, gradient clipping)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step(x, y)
    parts: dict[str, float] = {}
    owners = (("LinearCrossEntropy", "loss head"), ("CausalAttention", "attention"))
    for event in prof.events():  # self times: each microsecond counted once
        part, up = None, event
        while up is not None and part is None:
            if up.name.startswith("Optimizer.step"):
                part = "optimizer"
            part = part or next((p for key, p in owners if key in up.name), None)
            up = up.cpu_parent
        if part is None:
            if event.name in ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"):
                part = "matmuls"
            elif event.name in ("aten::copy_", "aten::_to_copy", "aten::clone"):
                part = "casts and copies"
            else:
                part = "rest"
        parts[part] = parts.get(part, 0.0) + event.self_cpu_time_total / 1e6 / steps
    return parts


def bench_shape(
    name: str,
    shape: dict,
    steps: int,
    warmup: int,
    compiled: bool,
    threads: list[int],
    where: bool = False,
) -> list[str]:
    """Tokens/s of every runner at each thread count, each as a fraction of the matmul rate
    measured at that thread count (MFU), and the scaling from the first count to the others."""
    B, T = shape["batch"], shape["T"]
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, VOCAB, (B, T), generator=gen)
    y = torch.roll(x, -1, dims=1)
    runners = {"hf fp32": hf_step_fn(shape)}
    model, runners["ours fp32"] = ours_step_fn(shape, torch.float32)
    if compiled:
        _, runners["ours fp32 compiled"] = ours_step_fn(shape, torch.float32, compile=True)
    bf16_native = native_bf16_flag() is not None
    if bf16_native:  # without AVX-512 BF16 / AMX, bf16 matmuls are emulated and very slow
        _, runners["ours bf16 autocast"] = ours_step_fn(shape, torch.bfloat16)
        if compiled:  # what `mygpt2 train --dtype bfloat16 --compile true` runs
            _, runners["ours bf16 compiled"] = ours_step_fn(shape, torch.bfloat16, compile=True)
    flops_tok = model.flops_per_token(T)
    lines = [
        f"\n{name}: {shape} vocab {VOCAB}, {model.num_params() / 1e6:.1f}M params, "
        f"{flops_tok / 1e6:.1f} MFLOP/token"
    ]
    rates: dict[int, dict[str, float]] = {}  # threads -> runner (or matmul) -> tokens|FLOP/s
    for n in threads:
        torch.set_num_threads(n)
        peak = {
            "fp32": measure_matmul_flops(torch.float32, seconds=1.0),
            "bf16": measure_matmul_flops(torch.bfloat16, seconds=1.0),
        }
        times: dict[str, list[float]] = {k: [] for k in runners}
        for i in range(warmup + steps):
            for label, step in runners.items():  # interleaved: load hits every runner alike
                t0 = time.perf_counter()
                step(x, y)
                if i >= warmup:
                    times[label].append(time.perf_counter() - t0)
        rates[n] = {label: B * T / statistics.median(ts) for label, ts in times.items()}
        rates[n].update({f"matmul {k}": v for k, v in peak.items()})
        hf_rate = rates[n]["hf fp32"]
        lines.append(
            f"  {n} thread{'s' if n > 1 else ''}: measured matmul rate fp32 "
            f"{peak['fp32'] / 1e9:,.0f} GFLOP/s, bf16 {peak['bf16'] / 1e9:,.0f} GFLOP/s"
        )
        lines.append(
            f"    {'runner':<22}{'tokens/s':>10}{'vs hf fp32':>12}{'of rate':>9}{'matmuls':>9}"
        )
        for label in runners:
            rate = rates[n][label]
            dtype = "bf16" if "bf16" in label else "fp32"
            frac = flops_tok * rate / peak[dtype]
            # the step's own matmuls alone, against the same rate: the ceiling for this step
            mm = ""
            if label.startswith("ours") and "compiled" not in label:
                mm_frac = (
                    flops_tok * B * T / step_matmul_seconds(runners[label], x, y) / peak[dtype]
                )
                mm = f"{mm_frac:>9.0%}"
            lines.append(f"    {label:<22}{rate:>10,.0f}{rate / hf_rate:>11.2f}x{frac:>9.0%}{mm}")
    if where:
        for n in threads:
            torch.set_num_threads(n)
            label = "ours bf16 autocast" if bf16_native else "ours fp32"
            parts = where_the_time_goes(runners[label], x, y)
            total = sum(parts.values())
            shares = ", ".join(f"{k} {v * 1e3:,.0f} ms" for k, v in sorted(parts.items()))
            lines.append(
                f"  where {label}'s step goes, {n} thread(s), {total * 1e3:,.0f} ms: {shares}"
            )
    if len(threads) > 1:
        first = threads[0]
        for n in threads[1:]:
            parts = [
                f"{label} {rates[n][label] / rates[first][label]:.2f}x" for label in rates[first]
            ]
            lines.append(f"  scaling {first} -> {n} threads: " + ", ".join(parts))
    lines.append(
        "  (of rate: the step's model FLOPs/s over the measured matmul rate; matmuls: the "
        "same FLOPs over the time the step spends in matmuls alone, its ceiling)"
    )
    if not bf16_native:
        lines.append(
            "  (bf16 autocast skipped: this CPU has no native bf16 (avx512_bf16 or amx_bf16 in "
            "/proc/cpuinfo), so bf16 would be emulated, many times slower than fp32; "
            f"cpu capability {torch.backends.cpu.get_cpu_capability()})"
        )
    return lines


def loss_check(
    steps: int,
    seeds: int,
    tokenizer: str,
    shakespeare: Path,
    tiktoken_file: Path,
    out: Path,
    dtypes: tuple[str, ...] = ("float32", "bfloat16"),
) -> list[str]:
    """Train the same small model on Tiny Shakespeare in fp32 and bf16 autocast from `seeds`
    seeds each; compare the mean validation losses against each other and the seeds' spread.
    (`dtypes` runs only some: to split the work over processes, or to rerun one side.)"""
    from mygpt2.commands.args import load_config
    from mygpt2.train import train

    if tokenizer == "gpt2":
        tok_args = ["--use_tiktoken=true", f"--tiktoken_file={tiktoken_file}"]
    else:
        tok_args = ["--tokenizer_path=bytes"]
    results: dict[str, list[float]] = {d: [] for d in dtypes}
    lines = []
    for seed in range(seeds):
        for dtype in results:
            args = [
                f"--data={shakespeare}",
                *tok_args,
                f"--cache_dir={out / 'cache'}",
                f"--out_dir={out / f'{dtype}-{seed}'}",
                "--n_layers=4",
                "--n_heads=4",
                "--n_emb=128",
                "--T=128",
                "--batch_size=16",
                "--macro_batch_size=16",
                f"--max_steps={steps}",
                f"--eval_interval={steps}",
                "--eval_batches=40",
                "--lr=2e-3",
                "--min_lr=2e-4",
                "--device=cpu",
                f"--dtype={dtype}",
                f"--seed={seed}",
            ]
            t0 = time.perf_counter()
            val = train(load_config(args))["val_loss"]
            results[dtype].append(val)
            line = f"  seed {seed} {dtype:<9} val loss after {steps} steps: {val:.4f}"
            lines.append(f"{line}  ({time.perf_counter() - t0:.0f}s)")
            print(lines[-1], flush=True)
    means = {d: statistics.mean(v) for d, v in results.items()}
    for dtype, vals in results.items():
        spread = max(vals) - min(vals)
        lines.append(f"  {dtype:<9} mean {means[dtype]:.4f}, seeds' spread {spread:.4f}")
    if len(means) == 2:
        diff = means["bfloat16"] - means["float32"]
        lines.append(f"  bf16 - fp32 (means of {seeds} seeds) = {diff:+.4f} (goal: within 0.02)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--no-compile",
        action="store_true",
        help="skip the compiled runners (fp32, and bf16 where native)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[],
        help="thread counts to run at, in turn (default: 1 and torch's default, the cores)",
    )
    parser.add_argument(
        "--where", action="store_true", help="also: where our step's time goes (torch.profiler)"
    )
    parser.add_argument("--loss-check", action="store_true")
    parser.add_argument("--loss-steps", type=int, default=600)
    parser.add_argument("--loss-seeds", type=int, default=3)
    parser.add_argument("--loss-tokenizer", choices=["gpt2", "bytes"], default="bytes")
    parser.add_argument(
        "--loss-dtypes", nargs="+", choices=["float32", "bfloat16"], default=["float32", "bfloat16"]
    )
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    parser.add_argument("--shakespeare", type=Path, default=shared / "tinyshakespeare.txt")
    parser.add_argument("--tiktoken-file", type=Path, default=shared / "gpt2.tiktoken")
    args = parser.parse_args()
    threads = [threads_within_cores(n, "--threads") for n in args.threads]
    threads = threads or sorted({1, torch.get_num_threads()})
    keep_freed_memory()  # as mygpt2 train does on a CPU; for every runner alike
    flags = " ".join(sorted(cpu_flags() & {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}))
    print(
        f"torch {torch.__version__}, threads {threads}, "
        f"{platform.processor() or platform.machine()} ({flags}), {time.strftime('%Y-%m-%d')}"
    )
    if args.loss_check:
        import tempfile

        torch.set_num_threads(threads[-1])

        with tempfile.TemporaryDirectory() as tmp:
            print(
                "\n".join(
                    loss_check(
                        args.loss_steps,
                        args.loss_seeds,
                        args.loss_tokenizer,
                        args.shakespeare,
                        args.tiktoken_file,
                        Path(tmp),
                        tuple(args.loss_dtypes),
                    )
                )
            )
        return
    for name in args.shapes:
        steps = args.steps if name == "small" else max(3, args.steps // 2)
        print(
            "\n".join(
                bench_shape(
                    name, SHAPES[name], steps, args.warmup, not args.no_compile, threads, args.where
                )
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
