"""Data preparation throughput: `mygpt2.prepare` against bare tiktoken, and its peak memory.

The corpus is Tiny Shakespeare concatenated `--copies` times (50 copies = 55.8 MB) into one
file in a temporary directory; the tokenizer is GPT-2's, read from `../shared/data/
gpt2.tiktoken` (no download). Two measurements, each in a fresh process so that its peak
RSS (`ru_maxrss`) is its own:

- `prepare`: the whole `mygpt2.prepare.prepare` call, reading the file, encoding in chunks
  with one thread per core, writing train.bin/val.bin/meta.json;
- `tiktoken`: bare `tiktoken.Encoding.encode_ordinary_batch` over the same text (the copies
  as documents, already in memory; reading is not timed) with the same number of threads.

Both must produce the same number of tokens (prepare adds one end-of-text per document
boundary, and here there is one document). The goal is prepare >= 0.8x tiktoken's speed
with a peak memory well under the corpus size; `--scale` repeats the prepare run on a
corpus four times bigger to show that its memory does not grow with the corpus.

    python benchmarks/bench_prepare.py            # 50 copies, 3 runs each, median
    python benchmarks/bench_prepare.py --scale    # also prepare 200 copies (223 MB)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def reset_peak() -> None:
    """Forget the peak RSS inherited from the parent (Linux keeps it across fork and exec)."""
    with contextlib.suppress(OSError):  # not Linux: ru_maxrss bounds the peak from above
        Path("/proc/self/clear_refs").write_text("5")


def rss_mb() -> float:
    """Peak resident memory of this process so far, in MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6  # KiB on Linux


def child_prepare(corpus: Path, out: Path) -> dict:
    from mygpt2.config import Config
    from mygpt2.prepare import prepare
    from mygpt2.tokenizer import load_tokenizer

    cfg = Config()
    cfg.tokenizer.use_tiktoken = True
    cfg.tokenizer.tiktoken_file = str(SHARED / "gpt2.tiktoken")
    cfg.data.data = str(corpus)
    cfg.data.data_dir = str(out)
    tok = load_tokenizer(cfg.tokenizer)
    tok.encode_ordinary("warm up")
    base = rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    directory = prepare(cfg, tok, progress=False, force=True)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
    tokens = meta["train_tokens"] + meta["val_tokens"]
    return {
        "seconds": seconds,
        "cpu": cpu,
        "tokens": tokens,
        "base_rss": base,
        "peak_rss": rss_mb(),
    }


def child_tiktoken(corpus: Path, copies: int, threads: int) -> dict:
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe
    from tiktoken_ext.openai_public import r50k_pat_str

    enc = tiktoken.Encoding(
        name="gpt2",
        pat_str=r50k_pat_str,
        mergeable_ranks=load_tiktoken_bpe(str(SHARED / "gpt2.tiktoken")),
        special_tokens={"<|endoftext|>": 50256},
    )
    enc.encode_ordinary("warm up")
    base = rss_mb()
    text = corpus.read_text(encoding="utf-8")
    size = len(text) // copies
    docs = [text[i * size : (i + 1) * size] for i in range(copies)]
    del text
    t0, c0 = time.perf_counter(), time.process_time()
    ids = enc.encode_ordinary_batch(docs, num_threads=threads)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "seconds": seconds,
        "cpu": cpu,
        "tokens": sum(map(len, ids)),
        "base_rss": base,
        "peak_rss": rss_mb(),
    }


def run_child(*args: str) -> dict:
    """Run this script in child mode and parse its one-line JSON answer."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarize(results: list[dict], mb: float) -> dict:
    seconds = statistics.median(r["seconds"] for r in results)
    return {
        "MB": mb,
        "seconds": seconds,
        "MB/s": mb / seconds,
        "cpu": statistics.median(r["cpu"] for r in results),
        "tokens": results[0]["tokens"],
        "base_rss": max(r["base_rss"] for r in results),
        "peak_rss": max(r["peak_rss"] for r in results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--scale", action="store_true", help="also prepare 4x the copies")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        reset_peak()
        kind, corpus, copies, threads, out = args.child
        if kind == "prepare":
            result = child_prepare(Path(corpus), Path(out))
        else:
            result = child_tiktoken(Path(corpus), int(copies), int(threads))
        print(json.dumps(result))
        return

    threads = str(
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    )
    source = (SHARED / "tinyshakespeare.txt").read_bytes()
    print(f"python {platform.python_version()}, {threads} threads, {platform.processor() or ''}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sizes = [args.copies, 4 * args.copies] if args.scale else [args.copies]
        for copies in sizes:
            corpus = work / f"shakespeare-x{copies}.txt"
            with open(corpus, "wb") as fh:  # copy by copy: this process stays small
                for _ in range(copies):
                    fh.write(source)
            kinds = ["tiktoken", "prepare"] if copies == args.copies else ["prepare"]
            # Interleaved runs, so a change in machine load hits both sides alike.
            results: dict[str, list[dict]] = {kind: [] for kind in kinds}
            for _ in range(args.runs):
                for kind in kinds:
                    out = str(work / f"out-{kind}")
                    results[kind].append(run_child(kind, str(corpus), str(copies), threads, out))
            for kind in kinds:
                r = summarize(results[kind], corpus.stat().st_size / 1e6)
                rows.append((kind, copies, r))
                print(
                    f"{kind:9s} {r['MB']:7.1f} MB  {r['seconds']:6.2f} s  {r['MB/s']:5.2f} MB/s  "
                    f"CPU {r['cpu']:6.2f} s  {r['tokens']:,} tokens  peak RSS "
                    f"{r['peak_rss']:.0f} MB (+{r['peak_rss'] - r['base_rss']:.0f} MB over "
                    f"{r['base_rss']:.0f} MB after imports)"
                )
            corpus.unlink()
    by_kind = {(k, c): r for k, c, r in rows}
    bare, ours = by_kind[("tiktoken", args.copies)], by_kind[("prepare", args.copies)]
    if bare["tokens"] != ours["tokens"]:
        print(f"TOKEN COUNTS DIFFER: tiktoken {bare['tokens']}, prepare {ours['tokens']}")
    print(
        f"prepare / tiktoken speed: {ours['MB/s'] / bare['MB/s']:.2f}x wall clock, "
        f"{bare['cpu'] / ours['cpu']:.2f}x by CPU time (goal >= 0.8x)"
    )


if __name__ == "__main__":
    main()
