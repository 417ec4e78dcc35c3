"""How fast the `mygpt2` command answers when there is no real work: --help, tokenizer
show/stats, and a config error. Goal: under 0.3 s each (torch is imported only where needed).

The reference in the same run is the cost of `import torch` alone, which every command paid
before. Each command runs as a fresh process, best of --repeats.

    python benchmarks/bench_startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def best_time(argv: list[str], repeats: int) -> tuple[float, int]:
    """Fastest wall time of `argv` over `repeats` runs, and its exit code."""
    best, code = float("inf"), 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        code = subprocess.run(argv, capture_output=True).returncode
        best = min(best, time.perf_counter() - t0)
    return best, code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    mygpt2 = [sys.executable, "-m", "mygpt2.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "text.txt"
        text.write_text("To be, or not to be, that is the question.\n" * 200, encoding="utf-8")
        gpt2 = ["--use_tiktoken", "--tiktoken_file", str(SHARED / "gpt2.tiktoken")]
        cases = {
            "mygpt2 --help": [*mygpt2, "--help"],
            "mygpt2 train --help": [*mygpt2, "train", "--help"],
            "mygpt2 sample --help": [*mygpt2, "sample", "--help"],
            "mygpt2 train --lr fast (config error)": [*mygpt2, "train", "--lr", "fast"],
            "mygpt2 sample --lr 5 (inapplicable flag)": [*mygpt2, "sample", "--lr", "5"],
            "mygpt2 tokenizer show TEXT (GPT-2)": [*mygpt2, "tokenizer", "show", "Hello", *gpt2],
            "mygpt2 tokenizer stats FILE (GPT-2)": [
                *mygpt2,
                "tokenizer",
                "stats",
                str(text),
                *gpt2,
            ],
        }
        reference, _ = best_time([sys.executable, "-c", "import torch"], args.repeats)
        print(f"reference: python -c 'import torch': {reference:.3f} s\n")
        print(f"{'command':<44} {'seconds':>8} {'exit':>5} {'goal <0.3 s':>12}")
        for name, argv in cases.items():
            seconds, code = best_time(argv, args.repeats)
            verdict = "met" if seconds < 0.3 else "NOT met"
            print(f"{name:<44} {seconds:>8.3f} {code:>5} {verdict:>12}")


if __name__ == "__main__":
    main()
