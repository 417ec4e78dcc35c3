"""What health statistics cost a training run: `train_step` with and without a `HealthProbe`.

A run with `health_interval N` does N - 1 plain steps and one health step (the probe's hooks
on the last micro-batch, gradient and weight norms, a copy of the weights, the update
norms), so its overhead is (health step - plain step) / (N x plain step). Both kinds of step
run in this one process on the same model, batch and thread count, taking turns, so load
hits them alike; the figures are medians of CPU time (this process, all its threads), which
other jobs on the machine disturb less than wall time. It also times one redraw of
health.png from 20 health rows (the plot is redrawn at each evaluation, not at each step),
and with --block K, 2K blocks of N steps each way (N - 1 plain + 1 health against N plain,
in the order health, plain, plain, health, so that a drift in load cancels).

    python benchmarks/bench_health.py --steps 5                    # small and 124M, N = 50
    python benchmarks/bench_health.py --shapes small --steps 20 --block 2
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mygpt2.config import Config, ModelConfig
from mygpt2.dynamics.health import HealthProbe
from mygpt2.dynamics.plots import save_health_png
from mygpt2.model import GPT
from mygpt2.optim import make_optimizer
from mygpt2.runtime import threads_within_cores
from mygpt2.train import train_step

SHAPES = {  # the demo's model, and GPT-2 124M at a CPU-sized batch
    "small": dict(n_layers=4, n_heads=4, n_emb=128, T=128, vocab=2048, batch=16, accum=2),
    "124M": dict(n_layers=12, n_heads=12, n_emb=768, T=256, vocab=50257, batch=4, accum=1),
}


def setup(shape: dict) -> tuple[GPT, torch.optim.Optimizer, list]:
    cfg = Config()
    cfg.model = ModelConfig(
        n_layers=shape["n_layers"],
        n_heads=shape["n_heads"],
        n_emb=shape["n_emb"],
        T=shape["T"],
        vocab_size=shape["vocab"],
    )
    torch.manual_seed(0)
    model = GPT(cfg.model).train()
    optimizer = make_optimizer(model, cfg, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(
        0, shape["vocab"], (shape["accum"], shape["batch"], shape["T"] + 1), generator=g
    )
    batches = [(row[:, :-1], row[:, 1:]) for row in ids]
    return model, optimizer, batches


def cpu_time(fn) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def bench(name: str, shape: dict, steps: int, interval: int, block: int) -> list[str]:
    model, optimizer, batches = setup(shape)
    rows = []

    def plain() -> None:
        train_step(model, optimizer, batches, grad_clipping=1.0)

    def health() -> None:
        result = train_step(model, optimizer, batches, grad_clipping=1.0, health=HealthProbe(model))
        rows.append({"step": len(rows) + 1, "kind": "health", **result.health})

    plain()  # warm-up
    health()
    times: dict[str, list[float]] = {"plain": [], "health": []}
    for _ in range(steps):  # turns: load hits both alike
        times["plain"].append(cpu_time(plain))
        times["health"].append(cpu_time(health))
    p, h = statistics.median(times["plain"]), statistics.median(times["health"])
    overhead = (h - p) / (interval * p)
    history = (rows * 20)[:20]
    history = [{**r, "step": (i + 1) * interval} for i, r in enumerate(history)]
    with tempfile.TemporaryDirectory() as tmp:
        draw = cpu_time(lambda: save_health_png(history, Path(tmp) / "health.png"))
    tokens = shape["accum"] * shape["batch"] * shape["T"]
    lines = [
        f"\n{name}: {shape}, {model.num_params() / 1e6:.1f}M params, {tokens} tokens/step",
        f"  plain step {p * 1e3:8.1f} ms CPU   health step {h * 1e3:8.1f} ms CPU   "
        f"(+{(h - p) / p:.0%} on that step)",
        f"  overhead at health_interval {interval}: {overhead:.2%} of the run (medians)",
        f"  health.png from {len(history)} rows: {draw:.2f} s CPU per evaluation",
    ]
    if block:  # blocks of `interval` steps each way, in CPU time, in ABBA order
        totals = {"plain": 0.0, "health": 0.0}
        for kind in ("health", "plain", "plain", "health") * block:
            last = health if kind == "health" else plain
            t0 = time.process_time()
            for _ in range(interval - 1):
                plain()
            last()
            totals[kind] += time.process_time() - t0
        ratio = totals["health"] / totals["plain"] - 1
        lines.append(
            f"  {2 * block} blocks of {interval} steps each way: {totals['plain']:.1f} s plain, "
            f"{totals['health']:.1f} s with one health step per block ({ratio:+.2%})"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--steps", type=int, default=10, help="timed steps of each kind")
    parser.add_argument("--interval", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--block", type=int, default=0, help="also time 2 x BLOCK blocks of N steps each way"
    )
    args = parser.parse_args()
    torch.set_num_threads(threads_within_cores(args.threads, "--threads"))
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} thread(s), CPU time"
    )
    for name in args.shapes:
        lines = bench(name, SHAPES[name], args.steps, args.interval, args.block)
        print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
