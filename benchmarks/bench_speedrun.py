"""The CPU speedrun (docs/SPEEDRUN.md): `mygpt2 train --preset shakespeare-speedrun` against
nanoGPT's own CPU recipe for Shakespeare, on this machine, in one script.

    nice -n -5 .venv/bin/python benchmarks/bench_speedrun.py --nanogpt /work/nanoGPT \\
        --shakespeare /path/to/tinyshakespeare.txt [--repeats 3]

The reference is nanoGPT's README line for a CPU ("4 layers, 4 heads, 128 wide, T 64, batch 12,
2000 iterations, lr 1e-3 cosine to 1e-4, dropout 0"), run as its `train.py` in a local
checkout (nothing downloads: its `input.txt` is copied from `--shakespeare` before its
`prepare.py` runs). Each repeat runs both, in alternating order (ABBA), as subprocesses
(`--seeds 1337 1 2` gives ours a seed per repeat in turn, `--ours-only` skips nanoGPT):

- wall seconds: from starting the command to its exit (imports, data, training, evaluations,
  checkpoints: what a user waits for). Our run also reports `elapsed_s`, its training steps only.
- the loss compared is the same for both: mean next-character cross-entropy over the WHOLE
  validation split (the last 10% of the text, 111,540 characters; at byte level each of its
  characters is one byte), scored in disjoint blocks of the model's T, every character after
  the first predicted once. nanoGPT's final checkpoint is scored by `nano_full_val_loss`
  below; ours by `mygpt2.evaluation.score_stream` at stride T, and cross-checked against the
  run's own last evaluation (which covers the whole split). nanoGPT's own figure, the mean of
  `eval_iters` random batches, is printed beside it as "its estimate".
"""

from __future__ import annotations

import argparse
import importlib.util
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

import numpy as np
import torch
import torch.nn.functional as F

from mygpt2.checkpoint import load_checkpoint, model_from_checkpoint
from mygpt2.config import Config, apply_preset
from mygpt2.evaluation.text import TextStream, score_stream
from mygpt2.prepare import prepared_dir
from mygpt2.tokenizer import load_tokenizer

MYGPT2 = [sys.executable, "-m", "mygpt2.cli"]
TARGET = 1.8857  # nanoGPT's CPU recipe after 2000 iterations (issue #17)
NANO_FLAGS = [
    "--device=cpu",
    "--compile=False",
    "--eval_iters=20",
    "--log_interval=1",
    "--block_size=64",
    "--batch_size=12",
    "--n_layer=4",
    "--n_head=4",
    "--n_embd=128",
    "--max_iters=2000",
    "--lr_decay_iters=2000",
    "--dropout=0.0",
]


def prepare_nanogpt(nanogpt: Path, text: Path) -> Path:
    """nanoGPT's character-level token files, made by its own prepare.py from our local text."""
    data = nanogpt / "data" / "shakespeare_char"
    if not (data / "val.bin").is_file():
        if not (data / "input.txt").is_file():
            shutil.copyfile(text, data / "input.txt")  # so its prepare.py does not download
        subprocess.run([sys.executable, "prepare.py"], cwd=data, check=True)
    return data


def run_nanogpt(nanogpt: Path, out_dir: Path) -> dict:
    """nanoGPT's CPU recipe; checkpoints at every evaluation, so the last one (iteration
    2000) is what gets scored."""
    cmd = [sys.executable, "train.py", "config/train_shakespeare_char.py", *NANO_FLAGS]
    cmd += [f"--out_dir={out_dir}", "--always_save_checkpoint=True"]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=nanogpt, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"nanoGPT failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    steps = re.findall(r"step (\d+): train loss [\d.]+, val loss ([\d.]+)", done.stdout)
    return {"wall_s": wall, "step": int(steps[-1][0]), "estimate": float(steps[-1][1])}


def nano_full_val_loss(nanogpt: Path, ckpt_path: Path, val: np.ndarray) -> float:
    """Mean cross-entropy of nanoGPT's checkpoint over every character of `val` after the
    first, in disjoint blocks of its block_size: the same scoring as ours."""
    spec = importlib.util.spec_from_file_location("nanogpt_model", nanogpt / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    model = module.GPT(module.GPTConfig(**ckpt["model_args"]))
    state = {k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()}
    model.load_state_dict(state)
    model.eval()
    T, tokens = model.config.block_size, torch.from_numpy(val.astype(np.int64))
    nats, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(tokens) - 1, T):
            x = tokens[start : start + T][None]
            y = tokens[start + 1 : start + T + 1][None]
            x = x[:, : y.size(1)]
            logits, _ = model(x, y)
            nats += F.cross_entropy(logits[0], y[0], reduction="sum").item()
            count += y.numel()
    return nats / count


def run_ours(out_dir: Path, text: Path, extra: list[str]) -> dict:
    """`mygpt2 train --preset shakespeare-speedrun` (plus `extra` flags)."""
    cmd = [*MYGPT2, "train", "--preset", "shakespeare-speedrun"]
    cmd += ["--shakespeare_path", str(text), "--out_dir", str(out_dir), *extra]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"mygpt2 failed:\n{done.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if "val_loss" in r][-1]
    return {
        "wall_s": wall,
        "step": last["step"],
        "run_val": last["val_loss"],
        "elapsed_s": last["elapsed_s"],
    }


def our_full_val_loss(out_dir: Path, val: np.ndarray) -> float:
    """Our checkpoint scored by mygpt2.evaluation over the whole val split at stride T."""
    model = model_from_checkpoint(load_checkpoint(out_dir / "checkpoint.pt"))
    tokens = val.astype(np.int64)
    stream = TextStream(tokens, eot_id=256, text_tokens=len(tokens) - 1, bytes=0, documents=1)
    return score_stream(model, stream, batch_size=256).loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nanogpt", type=Path, required=True, help="a local nanoGPT checkout")
    ap.add_argument("--shakespeare", type=Path, default=os.environ.get("MYGPT2_SHAKESPEARE"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ours-only", action="store_true", help="skip nanoGPT (recipe search)")
    ap.add_argument(
        "--threads", type=int, default=0, help="OMP_NUM_THREADS for both runs; 0: torch's default"
    )
    ap.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="ours' seed at each repeat in turn (how much a result owes its seed); default the "
        "preset's. nanoGPT's train.py fixes its own.",
    )
    ap.add_argument("extra", nargs="*", help="flags added to ours, after --")
    args = ap.parse_args()
    if not args.shakespeare or not Path(args.shakespeare).is_file():
        sys.exit("give --shakespeare FILE (or MYGPT2_SHAKESPEARE): a local tinyshakespeare.txt")
    text = Path(args.shakespeare).resolve()
    if args.threads:  # both children inherit it; on a loaded machine 1 avoids OpenMP spinning
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    nano_val = np.fromfile(prepare_nanogpt(args.nanogpt, text) / "val.bin", dtype=np.uint16)

    cfg = Config()
    apply_preset(cfg, "shakespeare-speedrun")
    cfg.data.shakespeare_path = str(text)
    prepare = ["prepare", "--data", "shakespeare", "--tokenizer_path", "bytes"]
    subprocess.run(  # our byte files, made untimed as nanoGPT's prepare.py's are
        [*MYGPT2, *prepare, "--shakespeare_path", str(text)],
        check=True,
        capture_output=True,
    )
    ours_val = np.fromfile(prepared_dir(cfg, load_tokenizer(cfg.tokenizer)) / "val.bin", np.uint16)
    assert len(ours_val) == len(nano_val), "the two val splits differ in length"

    flags = set(Path("/proc/cpuinfo").read_text().split()) & CPU_FLAGS
    print(
        f"# {time.strftime('%Y-%m-%d')} torch {torch.__version__}, {os.cpu_count()} CPUs, "
        f"flags {' '.join(sorted(flags))}, nice {os.nice(0)}, "
        f"OMP_NUM_THREADS {os.environ.get('OMP_NUM_THREADS', 'unset')}"
    )
    nano, ours = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            order = ("nano", "ours") if r % 2 == 0 else ("ours", "nano")
            for who in order:
                if who == "nano" and args.ours_only:
                    continue
                load = os.getloadavg()[0]
                out = Path(tmp) / f"{who}{r}"
                if who == "nano":
                    res = run_nanogpt(args.nanogpt, out)
                    res["full_val"] = nano_full_val_loss(args.nanogpt, out / "ckpt.pt", nano_val)
                    nano.append(res)
                    print(
                        f"nanoGPT  #{r}: {res['wall_s']:6.1f} s wall, step {res['step']}, "
                        f"its estimate {res['estimate']:.4f}, full val {res['full_val']:.4f}"
                        f"  (load {load:.1f})",
                        flush=True,
                    )
                else:
                    # --seeds given: this repeat's seed; else the preset's, or the extra flags'
                    seed = args.seeds[r % len(args.seeds)] if args.seeds else None
                    seed_flag = [] if seed is None else ["--seed", str(seed)]
                    res = run_ours(out, text, [*args.extra, *seed_flag])
                    res["full_val"] = our_full_val_loss(out, ours_val)
                    ours.append(res)
                    print(
                        f"mygpt2   #{r}{f' (seed {seed})' if seed is not None else ''}: "
                        f"{res['wall_s']:6.1f} s wall "
                        f"({res['elapsed_s']:.1f} s "
                        f"training), step {res['step']}, run's val {res['run_val']:.4f}, "
                        f"full val {res['full_val']:.4f}  (load {load:.1f})",
                        flush=True,
                    )
    med = statistics.median
    ours_wall = med(r["wall_s"] for r in ours)
    print(
        f"mygpt2 median: {ours_wall:.1f} s wall, full val "
        f"{med(r['full_val'] for r in ours):.4f} (target {TARGET}, reached in "
        f"{sum(r['full_val'] <= TARGET for r in ours)}/{len(ours)})"
    )
    if nano:
        nano_wall = med(r["wall_s"] for r in nano)
        print(
            f"nanoGPT median: {nano_wall:.1f} s wall, full val "
            f"{med(r['full_val'] for r in nano):.4f}, its estimate "
            f"{med(r['estimate'] for r in nano):.4f}"
        )
        print(
            f"ratio (mygpt2 / nanoGPT wall): {ours_wall / nano_wall:.3f} "
            f"(goals: <= 0.333 in issue #17, <= 0.25 in #24); load average now {os.getloadavg()[0]:.1f}"
        )


CPU_FLAGS = {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}

if __name__ == "__main__":
    main()
