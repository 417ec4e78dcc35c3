"""Small-model training: `mygpt2 train` against nanoGPT's own CPU recipe, on the same text.

nanoGPT's README trains its Shakespeare-char model on a CPU with
`config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20 --log_interval=1
--block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000
--lr_decay_iters=2000 --dropout=0.0`. This script runs exactly that from a local nanoGPT
checkout (`--nanogpt DIR`; nothing is downloaded: when the checkout has no
`data/shakespeare_char/input.txt`, the text given here is copied there before its
`prepare.py` runs), then `mygpt2 train` with the same shape and hyperparameters (no biases,
lr 1e-3 to 1e-4 over 2000 steps, 100 warm-up steps, beta2 0.99, weight decay 0.1, clipping
1.0, validation every 250 steps on 20 batches) on the same text with the byte-level tokenizer
(Tiny Shakespeare is ASCII: one byte per character, so the tokens and the per-token losses
are those of nanoGPT's character vocabulary).

Each side runs as its own process, one after the other, `--rounds` times alternating, with the
same thread count. Reported: the median milliseconds per iteration (nanoGPT's own `time` per
iter; ours from metrics.jsonl), the ratio, and the final validation loss of each.

    python benchmarks/bench_nanogpt.py --nanogpt ../nanoGPT
    python benchmarks/bench_nanogpt.py --nanogpt ../nanoGPT --dtype float32 --iters 500
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RECIPE = {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64, "batch_size": 12}


def run_nanogpt(checkout: Path, iters: int, text: Path, out: Path, env: dict) -> dict:
    """nanoGPT's train.py with its CPU recipe; ms/iter (median) and its last val loss."""
    data = checkout / "data" / "shakespeare_char"
    if not (data / "train.bin").exists():
        if not (data / "input.txt").exists():
            shutil.copyfile(text, data / "input.txt")  # its prepare.py would download it
        subprocess.run([sys.executable, "prepare.py"], cwd=data, check=True, env=env)
    flags = [f"--{k}={v}" for k, v in RECIPE.items()]
    flags += ["--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1"]
    flags += [f"--max_iters={iters}", f"--lr_decay_iters={iters}", "--dropout=0.0"]
    flags += [f"--out_dir={out}"]
    cmd = [sys.executable, "train.py", "config/train_shakespeare_char.py", *flags]
    log = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True, check=True)
    ms = [float(m) for m in re.findall(r"iter \d+: loss [\d.]+, time ([\d.]+)ms", log.stdout)]
    vals = re.findall(r"step \d+: train loss [\d.]+, val loss ([\d.]+)", log.stdout)
    return {"ms": statistics.median(ms[5:]), "val": float(vals[-1])}


def run_ours(iters: int, text: Path, out: Path, env: dict, dtype: str, compile: bool) -> dict:
    """`mygpt2 train` with the same recipe; ms/iter (median) and its last val loss."""
    flags = {
        "data": text,
        "tokenizer_path": "bytes",
        "out_dir": out,
        "cache_dir": out / "cache",
        "n_layers": 4,
        "n_heads": 4,
        "n_emb": 128,
        "T": 64,
        "bias": "false",
        "dropout": 0.0,
        "batch_size": 12,
        "macro_batch_size": 12,
        "max_steps": iters,
        "lr": 1e-3,
        "min_lr": 1e-4,
        "warmup_ratio": min(1.0, 100 / iters),  # nanoGPT: 100 warm-up iterations
        "beta2": 0.99,
        "weight_decay": 0.1,
        "grad_clipping": 1.0,
        "eval_interval": 250,
        "eval_batches": 20,
        "device": "cpu",
        "dtype": dtype,
        "compile": str(compile).lower(),
    }
    cmd = [sys.executable, "-m", "mygpt2.cli", "train", *(f"--{k}={v}" for k, v in flags.items())]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"mygpt2 train failed ({done.returncode}):\n{done.stderr[-2000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    tokens = 12 * 64
    ms = [1000 * tokens / r["tokens_per_s"] for r in rows if r["kind"] == "train"]
    vals = [r["val_loss"] for r in rows if r["kind"] == "eval"]
    return {"ms": statistics.median(ms[5:]), "val": vals[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nanogpt", type=Path, required=True, help="a local nanoGPT checkout")
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--dtype", default="auto", help="ours: auto, float32 or bfloat16")
    parser.add_argument("--compile", action="store_true", help="ours with --compile true")
    parser.add_argument("--threads", type=int, default=0, help="OMP threads; 0: the default")
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"
    parser.add_argument("--text", type=Path, default=shared)
    args = parser.parse_args()
    checkout = args.nanogpt.resolve()
    if not (checkout / "train.py").is_file() or not (checkout / "model.py").is_file():
        sys.exit(f"{checkout} is not a nanoGPT checkout (no train.py / model.py there)")
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    print(f"{time.strftime('%Y-%m-%d')}, python {sys.version.split()[0]}, {args.iters} iters")
    results: dict[str, list[dict]] = {"nanoGPT": [], "mygpt2": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            results["nanoGPT"].append(
                run_nanogpt(checkout, args.iters, args.text.resolve(), Path(tmp) / f"n{r}", env)
            )
            ours = run_ours(
                args.iters, args.text.resolve(), Path(tmp) / f"o{r}", env, args.dtype, args.compile
            )
            results["mygpt2"].append(ours)
            print(f"  round {r + 1}: nanoGPT {results['nanoGPT'][-1]}, mygpt2 {ours}", flush=True)
    ms = {k: statistics.median(x["ms"] for x in v) for k, v in results.items()}
    print(f"  {'':<8}{'ms/iter':>9}{'val loss':>10}")
    for k, v in results.items():
        print(f"  {k:<8}{ms[k]:>9.1f}{v[-1]['val']:>10.4f}")
    print(f"  mygpt2 ({args.dtype}) is {ms['nanoGPT'] / ms['mygpt2']:.2f}x nanoGPT's speed")


if __name__ == "__main__":
    main()
