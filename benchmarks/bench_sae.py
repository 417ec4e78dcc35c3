"""SAE training throughput: `mygpt2 sae train` against SAELens on the same model, side by side.

One run builds a random model (mygpt2's `GPT`, exported as a Hugging Face GPT-2 directory),
random token windows, and trains a TopK SAE of the same size on the same hook point with the
same batch, buffer rows, learning rate and token count twice, each in its own process:
- mygpt2: `mygpt2.sae_train.train_sae` on the model loaded from that directory;
- SAELens 6.x (`.venv/sae-lens`, see scripts/setup_saelens.sh): `LanguageModelSAETrainingRunner`
  with the model booted through TransformerLens's `TransformerBridge` from the same directory
  and the same tokens as a pre-tokenized dataset (no BOS added, wandb off, no checkpoints).
Throughput is activation tokens per second of the training call, in wall time and per second
of the process's CPU time (all its threads; less disturbed by other jobs), the model forwards
included (model loading and imports excluded; mygpt2's call also writes its SAE, checkpoint and
plot at the end, SAELens's writes nothing). Both processes use the same thread count;
they run one after the other, so other load on the machine hits them at different times:
repeat with --repeat and read the spread. Before timing, the SAELens side checks that the
bridge's activations at the hook equal mygpt2's for the same tokens (same model, same hook).

    python benchmarks/bench_sae.py                               # small model, 500k tokens
    python benchmarks/bench_sae.py --shape 124M --tokens 200_000 --d_sae 6144
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAELENS = Path(os.environ.get("MYGPT2_SAELENS_PATH") or REPO / ".venv" / "sae-lens")
SHAPES = {  # the demo's model and GPT-2 124M's shape, random weights
    "small": dict(n_layers=4, n_heads=4, n_emb=128, T=128, vocab_size=2048),
    "124M": dict(n_layers=12, n_heads=12, n_emb=768, T=128, vocab_size=50257),
}


def ours(work: Path, a: dict) -> dict:
    import numpy as np
    import torch
    import torch._dynamo

    from mygpt2.hf import from_pretrained
    from mygpt2.sae_train import Settings, train_sae

    model = from_pretrained(str(work / "hf")).eval()
    tokens = np.load(work / "tokens.npy")
    s = Settings(
        hook=a["hook"], d_sae=a["d_sae"], k=a["k"], tokens=a["tokens"], batch_size=a["batch"],
        lr=a["lr"], context=a["T"], model_batch=a["model_batch"],
        buffer_tokens=a["buffer_batches"] * a["model_batch"] * a["T"], checkpoint_every=10**9,
    )  # fmt: skip
    start, cpu = time.perf_counter(), time.process_time()
    train_sae(model, tokens, s, work / f"ours-{time.time_ns()}", source={}, progress=False,
              say=lambda *_: None)  # fmt: skip
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    steps = -(-a["tokens"] // a["batch"])
    threads = torch.get_num_threads()
    return {"tokens": steps * a["batch"], "seconds": seconds, "cpu": cpu, "threads": threads}


def saelens(work: Path, a: dict) -> dict:
    import numpy as np
    import torch
    import torch._dynamo
    from datasets import Dataset
    from sae_lens import (
        LanguageModelSAERunnerConfig,
        LanguageModelSAETrainingRunner,
        LoggingConfig,
        TopKTrainingSAEConfig,
    )
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(str(work / "hf"), device="cpu")
    tokens = np.load(work / "tokens.npy").astype(np.int64)
    windows = tokens[: len(tokens) // a["T"] * a["T"]].reshape(-1, a["T"])
    probe = torch.from_numpy(windows[:2])
    _, cache = bridge.run_with_cache(probe, names_filter=a["hook"])
    want = torch.load(work / "probe.pt", weights_only=True)
    same = torch.allclose(cache[a["hook"]].float(), want, atol=1e-4)
    cfg = LanguageModelSAERunnerConfig(
        sae=TopKTrainingSAEConfig(d_in=a["n_emb"], d_sae=a["d_sae"], k=a["k"]),
        model_name="mygpt2-random", model_class_name="TransformerBridge", hook_name=a["hook"],
        dataset_path="", is_dataset_tokenized=True, streaming=False, context_size=a["T"],
        prepend_bos=False, training_tokens=a["tokens"], train_batch_size_tokens=a["batch"],
        store_batch_size_prompts=a["model_batch"],
        n_batches_in_buffer=a["buffer_batches"] * a["model_batch"],  # its buffer: this x T rows
        lr=a["lr"], device="cpu", dtype="float32", n_checkpoints=0, output_path=None,
        logger=LoggingConfig(log_to_wandb=False), verbose=False, seed=a["seed"],
    )  # fmt: skip
    dataset = Dataset.from_dict({"input_ids": windows.tolist()})
    runner = LanguageModelSAETrainingRunner(cfg, override_dataset=dataset, override_model=bridge)
    start, cpu = time.perf_counter(), time.process_time()
    runner.run()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    steps = a["tokens"] // a["batch"]
    threads = torch.get_num_threads()
    return {"tokens": steps * a["batch"], "seconds": seconds, "cpu": cpu, "threads": threads,
            "bridge_matches_mygpt2": same}  # fmt: skip


def prepare(work: Path, a: dict) -> None:
    """The model (a Hugging Face directory), the tokens, and mygpt2's activations of a probe."""
    import numpy as np
    import torch

    from mygpt2.config import ModelConfig
    from mygpt2.hf import save_pretrained
    from mygpt2.model import GPT

    shape = SHAPES[a["shape"]]
    torch.manual_seed(a["seed"])
    model = GPT(ModelConfig(**shape)).eval()
    save_pretrained(model, work / "hf")
    rng = np.random.default_rng(a["seed"])
    n = (a["tokens"] // a["T"] + 64) * a["T"]  # one pass, no window read twice
    tokens = rng.integers(0, shape["vocab_size"], n, dtype=np.int64).astype(np.int32)
    np.save(work / "tokens.npy", tokens)
    probe = torch.from_numpy(tokens[: 2 * a["T"]].astype(np.int64)).view(2, a["T"])
    _, cache = model.run_with_cache(probe, names=a["hook"])
    torch.save(cache[a["hook"]], work / "probe.pt")


def side(name: str, work: Path, a: dict) -> dict:
    env = dict(os.environ)
    if name == "saelens":
        env["PYTHONPATH"] = str(SAELENS)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    run = subprocess.run(
        [sys.executable, __file__, "--side", name, "--work", str(work), "--args", json.dumps(a)],
        capture_output=True, text=True, env=env, timeout=7200,
    )  # fmt: skip
    if run.returncode != 0:
        raise SystemExit(f"{name} failed:\n{run.stderr[-4000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=SHAPES, default="small")
    p.add_argument("--layer", type=int, default=1, help="hook blocks.L.hook_resid_post")
    p.add_argument("--tokens", type=int, default=500_000)
    p.add_argument("--d_sae", type=int, default=2048)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=4096, help="activation rows per step")
    p.add_argument("--model_batch", type=int, default=16, help="windows per model forward")
    p.add_argument("--buffer_batches", type=int, default=8, help="forwards per shuffle buffer")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--only", choices=("ours", "saelens"))
    p.add_argument("--side", choices=("ours", "saelens"), help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--args", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:
        a = json.loads(args.args)
        print(json.dumps((ours if args.side == "ours" else saelens)(Path(args.work), a)))
        return
    shape = SHAPES[args.shape]
    a = {**vars(args), "T": shape["T"], "n_emb": shape["n_emb"], "seed": 0,
         "hook": f"blocks.{args.layer}.hook_resid_post"}  # fmt: skip
    for key in ("side", "work", "args", "only", "repeat"):
        a.pop(key)
    if args.only != "ours" and not (SAELENS / "sae_lens").is_dir():
        raise SystemExit(f"SAELens is not installed in {SAELENS}: bash scripts/setup_saelens.sh")
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; model "
        f"{args.shape} {shape}; TopK SAE d_in {shape['n_emb']} d_sae {args.d_sae} k {args.k} at "
        f"{a['hook']}; {args.tokens:,} tokens, batch {args.batch}, context {shape['T']}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prepare(work, a)
        for _ in range(args.repeat):
            got = {}
            for name in ("ours", "saelens"):
                if args.only in (None, name):
                    got[name] = side(name, work, a)
                    r = got[name]
                    print(f"  {name:<8} {r['tokens'] / r['seconds']:>10,.0f} tokens/s wall, "
                          f"{r['tokens'] / r['cpu']:>8,.0f} per CPU second ({r['tokens']:,} "
                          f"tokens in {r['seconds']:.1f} s, {r['cpu']:.1f} s CPU, "
                          f"{r['threads']} threads)" + ("" if name == "ours" else
                                         f"; bridge activations = mygpt2's: "
                                         f"{r['bridge_matches_mygpt2']}"), flush=True)  # fmt: skip
            if len(got) == 2:
                o, t = got["ours"], got["saelens"]
                wall = (o["tokens"] / o["seconds"]) / (t["tokens"] / t["seconds"])
                cpu = (o["tokens"] / o["cpu"]) / (t["tokens"] / t["cpu"])
                print(f"  ratio mygpt2 / SAELens: {wall:.2f}x wall, {cpu:.2f}x CPU", flush=True)


if __name__ == "__main__":
    main()
