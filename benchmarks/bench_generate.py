"""Generation speed: mygpt2's KV-cache generation against Hugging Face `generate`.

Both run the same random-initialised GPT-2 weights (built here, saved with HF's
`save_pretrained` and loaded with `GPT.from_pretrained`, so nothing is downloaded), on the CPU in
fp32, batch 1, a 16-token prompt and 200 new tokens: greedy, and top-k 50 sampling. Ours
generates with its weights laid out for one-token steps once (`generation_weights`), as
`mygpt2 serve` and `mygpt2 sample` do; the time that takes is printed. Two shapes:
a small one (4 layers, 4 heads, 128 wide, GPT-2's vocabulary), where per-token overhead
dominates, and GPT-2 124M, where every token streams all weights through memory. For 124M the
script also measures the machine's memory bandwidth and says how close generation comes to it.

    python benchmarks/bench_generate.py                 # both shapes
    python benchmarks/bench_generate.py --shapes small  # only the small one
    python benchmarks/bench_generate.py --runs 5 --warmup 2
    python benchmarks/bench_generate.py --dtype bfloat16   # ours in bf16 weights, HF in fp32

Each figure is the median of `--runs` timed runs after `--warmup` untimed ones; mygpt2 and HF
take turns run by run, so load from other processes hits both alike. The greedy tokens of both
implementations are checked to be identical.
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

import torch

from mygpt2.generate import generate, generation_weights
from mygpt2.hf import from_pretrained
from mygpt2.runtime import threads_within_cores

SHAPES = {
    "small": dict(n_layer=4, n_head=4, n_embd=128),
    "124M": dict(n_layer=12, n_head=12, n_embd=768),
}
PROMPT_LEN, NEW_TOKENS, VOCAB, N_POSITIONS = 16, 200, 50257, 1024


def median_seconds(fns: dict[str, Callable[[], object]], warmup: int, runs: int) -> dict:
    """Median wall time of each function over `runs` calls, after `warmup` untimed calls.

    The functions take turns within each run, so a busy machine slows all of them alike.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def memory_bandwidth_gbs(megabytes: int = 512, runs: int = 5) -> tuple[float, float]:
    """Measured memory bandwidth in GB/s: a copy (bytes read plus bytes written), and a sum
    (bytes read only, the pattern of streaming weights), of a tensor far larger than the caches."""
    src = torch.ones(megabytes * 2**20 // 4)
    dst = torch.empty_like(src)
    seconds = median_seconds(
        {"copy": lambda: dst.copy_(src), "sum": lambda: src.sum()}, warmup=1, runs=runs
    )
    nbytes = src.numel() * 4
    return 2 * nbytes / seconds["copy"] / 1e9, nbytes / seconds["sum"] / 1e9


def build_models(shape: dict[str, int]):
    """A random HF GPT2LMHeadModel and our GPT loaded from its saved directory."""
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(
        **shape,
        n_positions=N_POSITIONS,
        vocab_size=VOCAB,
        bos_token_id=None,  # no end-of-text token: both run all 200 steps
        eos_token_id=None,
    )
    hf = transformers.GPT2LMHeadModel(config).eval()
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        ours = from_pretrained(tmp).eval()
    return hf, ours


def bench_shape(
    name: str, warmup: int, runs: int, dtype: torch.dtype = torch.float32
) -> dict[str, float]:
    """Tokens/s of ours (weights in `dtype`) and HF (fp32), greedy and top-k 50, for one
    shape; prints a table."""
    hf, ours = build_models(SHAPES[name])
    ours = ours.to(dtype)
    # laid out for one-token steps once, as `mygpt2 serve` and `mygpt2 sample` do
    start = time.perf_counter()
    weights = generation_weights(ours)
    laid_out = time.perf_counter() - start
    prompt = torch.randint(0, VOCAB, (1, PROMPT_LEN), generator=torch.Generator().manual_seed(1))
    hf_kw = dict(
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=NEW_TOKENS,
        min_new_tokens=NEW_TOKENS,
        pad_token_id=0,
    )
    modes = {
        "greedy": (dict(temperature=0), dict(do_sample=False)),
        "top-k 50": (
            dict(temperature=1.0, top_k=50, seed=0),
            dict(do_sample=True, temperature=1.0, top_k=50, top_p=1.0),
        ),
    }

    # the same tokens, or the comparison means nothing
    ours_greedy = generate(ours, prompt[0].tolist(), NEW_TOKENS, temperature=0)[0]
    with torch.inference_mode():
        hf_greedy = hf.generate(prompt, do_sample=False, **hf_kw)[0, PROMPT_LEN:].tolist()
    same = ours_greedy == hf_greedy
    print(f"\n{name}: {ours.num_params() / 1e6:.1f}M parameters; greedy tokens identical: {same}")
    print(f"  weights laid out for one-token steps once (generation_weights): {laid_out:.2f} s")
    if not same:
        first = next(
            i for i, (a, b) in enumerate(zip(ours_greedy, hf_greedy, strict=True)) if a != b
        )
        print(f"  first difference at new token {first}")

    results = {"same": float(same)}
    print(f"  {'mode':<10} {'mygpt2 tok/s':>13} {'HF tok/s':>10} {'ratio':>7}")
    for mode, (ours_kw, hf_mode) in modes.items():

        def run_ours(ours_kw=ours_kw):
            return generate(ours, prompt[0].tolist(), NEW_TOKENS, weights=weights, **ours_kw)

        def run_hf(hf_mode=hf_mode):
            with torch.inference_mode():
                return hf.generate(prompt, **hf_mode, **hf_kw)

        seconds = median_seconds({"ours": run_ours, "hf": run_hf}, warmup, runs)
        ours_tps, hf_tps = NEW_TOKENS / seconds["ours"], NEW_TOKENS / seconds["hf"]
        results[f"{mode} ours"], results[f"{mode} hf"] = ours_tps, hf_tps
        print(f"  {mode:<10} {ours_tps:>13.1f} {hf_tps:>10.1f} {ours_tps / hf_tps:>6.2f}x")

    if name == "124M":
        # every new token reads every matmul weight once: the blocks, and the tied embedding
        # as the output head; of the position embedding only one row
        size = ours.transformer.wte.weight.element_size()
        weight_bytes = (ours.num_params() - ours.transformer.wpe.weight.numel()) * size
        copy, read = memory_bandwidth_gbs()
        print(f"  weights read per token: {weight_bytes / 1e6:.0f} MB ({dtype})")
        print(
            f"  machine bandwidth: copy (read + write) {copy:.1f} GB/s, read-only {read:.1f} GB/s"
        )
        print(f"  bandwidth limit: {read * 1e9 / weight_bytes:.1f} tokens/s at the read-only rate")
        for mode in modes:
            for who in ("ours", "hf"):
                rate = weight_bytes * results[f"{mode} {who}"] / 1e9
                print(
                    f"  {mode:<10} {who:<5} reads weights at {rate:5.1f} GB/s = "
                    f"{rate / copy:4.0%} of copy, {rate / read:4.0%} of read-only bandwidth"
                )
        results["copy GB/s"], results["read GB/s"] = copy, read
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0: torch's default")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(threads_within_cores(args.threads, "--threads"))
    warnings.filterwarnings("ignore")
    import transformers

    transformers.logging.set_verbosity_error()
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    print(f"batch 1, {PROMPT_LEN}-token prompt, {NEW_TOKENS} new tokens, CPU; ours {args.dtype}")
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    for name in args.shapes:
        bench_shape(name, args.warmup, args.runs, getattr(torch, args.dtype))


if __name__ == "__main__":
    main()
