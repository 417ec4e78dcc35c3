"""Hook points: what they cost when unused, and how fast `run_with_cache` is against
TransformerLens and nnsight.

Part 1, hooks off. The model as it was before hook points were added (mygpt2/model.py at
`--base`, loaded from git into its own module) against today's, on the same weight tensors,
taking turns run by run: a no-grad forward, a training step (forward with the fused loss,
backward, AdamW step) and greedy KV-cache generation. The goal is at most 1% slower.

Part 2, caching activations. One forward that keeps activations, on the same random GPT-2
weights (built here, saved with Hugging Face's `save_pretrained`; nothing is downloaded):
- mygpt2 `model.run_with_cache(idx)`: every hook point (attention scores and patterns
  included, which switches attention to the explicit softmax path), the points that nnsight
  can reach too, and residuals only (`blocks.*.hook_resid_pre` and `blocks.*.hook_resid_post`);
- TransformerLens 4.x `TransformerBridge.run_with_cache` on the same weights: all of its hook
  points, only the names mygpt2 has, and the same residuals;
- nnsight tracing our own GPT module: every submodule's output saved (all that nnsight can
  reach: attention scores, patterns and the split q/k/v are not module outputs), and
  residuals only (the embedding dropout's and each block's output: the same values).

    python benchmarks/bench_inspect.py                    # both parts, small and 124M shapes
    python benchmarks/bench_inspect.py --parts cache --shapes small --runs 10
    python benchmarks/bench_inspect.py --parts off --threads 1 --clock cpu   # a busy machine

Figures are medians over `--runs` timed runs after one warm-up, the contenders taking turns.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from mygpt2.generate import generate
from mygpt2.hf import from_pretrained
from mygpt2.model import GPT
from mygpt2.runtime import threads_within_cores

REPO = Path(__file__).resolve().parents[1]
SHAPES = {
    "tiny": dict(n_layer=2, n_head=2, n_embd=64),  # one short prompt: per-forward overhead shows
    "small": dict(n_layer=4, n_head=4, n_embd=128),
    "124M": dict(n_layer=12, n_head=12, n_embd=768),
}
BATCH = {"tiny": (1, 32), "small": (4, 128), "124M": (1, 256)}  # (B, T) of a forward
VOCAB, N_POSITIONS = 50257, 1024


CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter


def timed(fns: dict[str, Callable[[], object]], runs: int, warmup: int = 1) -> dict[str, list]:
    """Times of each function over `runs` rounds (after `warmup`), taking turns, in the
    opposite order every other round; wall-clock seconds, or with `--clock cpu` this process's
    CPU seconds (steadier on a busy machine when torch runs one thread)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(runs):
        for name, fn in list(fns.items())[:: 1 if r % 2 == 0 else -1]:
            start = clock()
            fn()
            times[name].append(clock() - start)
    return times


def build_hf(shape: dict[str, int], directory: Path):
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(
        **shape, n_positions=N_POSITIONS, vocab_size=VOCAB, bos_token_id=None, eos_token_id=None
    )
    hf = transformers.GPT2LMHeadModel(config).eval()
    hf.save_pretrained(directory)
    return hf


# ------------------------------------------------------------------------------ hooks off
def default_base() -> str:
    """The commit before hook points came into mygpt2/model.py."""
    out = subprocess.run(
        ["git", "log", "--format=%H", "-S", "active_hooks", "--", "mygpt2/model.py"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    ).stdout.split()
    if not out:
        raise SystemExit("no commit adds hook points to mygpt2/model.py; pass --base")
    return out[-1] + "^"


def model_before(base: str):
    """mygpt2/model.py as of `base`, imported as its own module."""
    source = subprocess.run(
        ["git", "show", f"{base}:mygpt2/model.py"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    ).stdout
    assert "active_hooks" not in source, f"{base} already has hook points"
    spec = importlib.util.spec_from_loader("mygpt2_model_before", loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    exec(compile(source, f"{base}:mygpt2/model.py", "exec"), module.__dict__)
    return module


def model_config(shape_name: str):
    from mygpt2.config import ModelConfig

    shape = SHAPES[shape_name]
    return ModelConfig(
        n_layers=shape["n_layer"],
        n_heads=shape["n_head"],
        n_emb=shape["n_embd"],
        T=N_POSITIONS,
        vocab_size=VOCAB,
    )


def bench_hooks_off(shape_name: str, base: str, runs: int) -> None:
    old_module = model_before(base)
    with tempfile.TemporaryDirectory() as tmp:
        build_hf(SHAPES[shape_name], Path(tmp))
        weights = from_pretrained(tmp).state_dict()
    new = GPT(model_config(shape_name)).eval()
    new.load_state_dict(weights)
    # `before` takes the very same tensors: generating 124M streams 0.5 GB of weights per
    # token, and two copies in different places in memory differ by a few percent by themselves
    old = old_module.GPT(new.config).eval()
    old.load_state_dict(new.state_dict(), assign=True)
    assert old.transformer.h[0].attn.c_attn.weight.data_ptr() == (
        new.transformer.h[0].attn.c_attn.weight.data_ptr()
    )
    del weights
    assert isinstance(new, GPT) and type(old) is not GPT
    B, T = BATCH[shape_name]
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, VOCAB, (B, T), generator=g)
    targets = torch.randint(0, VOCAB, (B, T), generator=g)
    prompt = idx[0, :16].tolist()
    with torch.no_grad():
        assert torch.equal(old(idx)[0], new(idx)[0]), "the two models differ"
    new_tokens = 64 if shape_name == "small" else 32
    assert generate(old, prompt, 8, temperature=0) == generate(new, prompt, 8, temperature=0)

    def forward(model):
        with torch.no_grad():
            model(idx)

    def make_step(model):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True)

        def step():
            model.train()
            _, loss = model(idx, targets=targets, return_logits=False)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            model.eval()

        return step

    rows = [
        ("forward (no grad)", f"batch {B} x {T}", lambda m: lambda: forward(m)),
        ("training step", f"batch {B} x {T}, AdamW", make_step),
        (
            "generation",
            f"{new_tokens} tokens, greedy",
            lambda m: lambda: generate(m, prompt, new_tokens, temperature=0),
        ),
    ]
    print(f"\nhooks off, {shape_name}: model.py at {base} ('before') against now")
    print(f"  {'':<18} {'':<22} {'before':>9} {'now':>9} {'now/before':>11} {'spread':>14}")
    for what, detail, make in rows:
        times = timed({"before": make(old), "now": make(new)}, runs)
        before, now = statistics.median(times["before"]), statistics.median(times["now"])
        ratios = sorted(n / b for n, b in zip(times["now"], times["before"], strict=True))
        q1, q3 = ratios[len(ratios) // 4], ratios[(3 * len(ratios)) // 4]
        print(
            f"  {what:<18} {detail:<22} {before * 1e3:7.1f}ms {now * 1e3:7.1f}ms "
            f"{statistics.median(ratios):10.4f}x  [{q1:.3f}, {q3:.3f}]"
        )


# ------------------------------------------------------------------------ run_with_cache
def post_order(module: torch.nn.Module, prefix: str = ""):
    """Submodule paths in the order their forwards finish (children before parents), which
    is the order nnsight wants outputs requested in; containers are never called."""
    for name, child in module.named_children():
        yield from post_order(child, f"{prefix}{name}.")
    if prefix and not isinstance(module, (torch.nn.ModuleList, torch.nn.ModuleDict)):
        yield prefix.rstrip(".")


def envoy_at(root, path: str):
    for part in path.split("."):
        root = root[int(part)] if part.isdigit() else getattr(root, part)
    return root


def nnsight_runner(model: GPT, idx: torch.Tensor, paths: list[str]):
    import nnsight

    traced = nnsight.NNsight(model)

    def run():
        saved = {}
        with torch.no_grad(), traced.trace(idx):
            for path in paths:
                saved[path] = envoy_at(traced, path).output.save()
        return saved

    return run


def boot_bridge(hf, directory: Path):
    import json

    import transformers
    from transformer_lens.model_bridge import TransformerBridge

    vocab = {chr(0x100 + i): i for i in range(hf.config.vocab_size)}
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    transformers.GPT2TokenizerFast(
        vocab_file=str(directory / "vocab.json"), merges_file=str(directory / "merges.txt")
    ).save_pretrained(directory)
    tok = transformers.AutoTokenizer.from_pretrained(directory)
    return TransformerBridge.boot_transformers(
        str(directory), hf_model=hf, tokenizer=tok, device="cpu"
    )


def bench_cache(shape_name: str, runs: int) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    B, T = BATCH[shape_name]
    with tempfile.TemporaryDirectory() as tmp:
        hf = build_hf(SHAPES[shape_name], Path(tmp))
        ours = from_pretrained(tmp).eval()
        bridge = boot_bridge(hf, Path(tmp))
    idx = torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(2))
    ours_names = ours.hook_names()
    resid = [n for n in ours_names if n.endswith(("hook_resid_pre", "hook_resid_post"))]
    # the points that are module outputs or sums of them: no q/k/v split, scores, pattern or
    # LayerNorm internals, which nnsight cannot reach and which cost mygpt2 extra work
    hidden = ("hook_q", "hook_k", "hook_v", "scores", "pattern", "hook_scale", "normalized")
    visible = [n for n in ours_names if not n.endswith(hidden)]
    all_paths = list(post_order(ours))
    resid_paths = ["transformer.drop"] + [f"transformer.h.{i}" for i in range(ours.config.n_layers)]

    def tl(names=None):
        def run():
            with torch.no_grad():
                return bridge.run_with_cache(idx, names_filter=names)[1]

        return run

    def plain():
        with torch.no_grad():
            ours(idx)
        return ()

    contenders = {
        "all": {
            "plain forward, nothing kept": plain,
            "mygpt2": lambda: ours.run_with_cache(idx)[1],
            "mygpt2, what nnsight can see": lambda: ours.run_with_cache(idx, names=visible)[1],
            "TransformerLens, all its points": tl(),
            "TransformerLens, mygpt2's names": tl(ours_names),
            "nnsight, every module output": nnsight_runner(ours, idx, all_paths),
        },
        "residuals": {
            "plain forward, nothing kept": plain,
            "mygpt2": lambda: ours.run_with_cache(idx, names=resid)[1],
            "TransformerLens": tl(resid),
            "nnsight": nnsight_runner(ours, idx, resid_paths),
        },
    }
    print(
        f"\nrun_with_cache, {shape_name} ({ours.num_params() / 1e6:.1f}M parameters), "
        f"batch {B} x {T}"
    )
    for what, fns in contenders.items():
        counts = {name: len(fn()) for name, fn in fns.items()}
        times = {n: statistics.median(t) for n, t in timed(fns, runs).items()}
        print(f"  {what}:")
        for name, seconds in times.items():
            ratio = seconds / times["mygpt2"]
            print(
                f"    {name:<34} {counts[name]:>5} entries {seconds * 1e3:8.1f} ms "
                f"{ratio:6.2f}x mygpt2's time"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", choices=["off", "cache"], default=["off", "cache"])
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--off_runs", type=int, default=41, help="runs for the hooks-off part")
    parser.add_argument("--base", default="", help="git revision of 'before' (default: found)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0: torch's default")
    parser.add_argument("--clock", choices=list(CLOCK), default="wall")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(threads_within_cores(args.threads, "--threads"))
    global clock
    clock = CLOCK[args.clock]
    warnings.filterwarnings("ignore")
    import transformers

    transformers.logging.set_verbosity_error()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, "
        f"{args.clock} clock"
    )
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    if "off" in args.parts:
        base = args.base or default_base()
        for name in args.shapes:
            bench_hooks_off(name, base, args.off_runs)
    if "cache" in args.parts:
        from importlib.metadata import version

        print(f"transformer_lens {version('transformer_lens')}, nnsight {version('nnsight')}")
        for name in args.shapes:
            bench_cache(name, args.runs)
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
