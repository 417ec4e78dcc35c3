"""The one-command demo: the whole pipeline, offline, on a CPU, in a few minutes.

1. train a BPE tokenizer on the built-in `stdlib` corpus (the Python standard library's own
   sources, always present, so no download is needed);
2. tokenize that corpus into train/val token files (done by training on first use);
3. train a small GPT on it;
4. sample Python-looking code from it into `generated.txt`.

Everything lands in `out_dir` (default `out-demo/`): tokenizer.json, checkpoint.pt,
metrics.jsonl, loss_plot.png, generated.txt. Any config flag overrides the demo's settings,
e.g. `mygpt2 demo --max_steps 100` for a quicker look.
"""

from __future__ import annotations

import time
from pathlib import Path

from mygpt2.config import flags_help, load_config, parse_flags
from mygpt2.errors import MyGPT2Error

# Sized to finish in under 10 minutes on 2 CPU cores (see README: measured timings).
DEMO_SETTINGS: dict[str, str] = {
    "data": "stdlib",
    "stdlib_max_mb": "6",
    "out_dir": "out-demo",
    "vocab_size": "2048",
    "n_layers": "4",
    "n_heads": "4",
    "n_emb": "128",
    "T": "128",
    "batch_size": "16",
    "macro_batch_size": "32",
    "max_steps": "1000",
    "eval_interval": "200",
    "eval_batches": "20",
    "lr": "3e-3",
    "min_lr": "3e-4",
    "warmup_ratio": "0.05",
    "dropout": "0.0",
    "start": "def ",
    "num_samples": "2",
    "max_new_tokens": "300",
    "temperature": "0.8",
    "top_k": "50",
}


def cli(argv: list[str]) -> None:
    """`mygpt2 demo`: tokenizer, data, training and sampling in one go."""
    if "-h" in argv or "--help" in argv:
        print(__doc__ + "\nflags (every config field):\n" + flags_help())
        return
    user, positional = parse_flags(argv, ("config",))
    if positional:
        raise MyGPT2Error(f"unexpected argument '{positional[0]}': flags look like --name value.")
    values = {**DEMO_SETTINGS, **user}
    values.setdefault("tokenizer_path", str(Path(values["out_dir"]) / "tokenizer.json"))
    args = [f"--{key}={value}" for key, value in values.items()]
    cfg, _, _ = load_config(args)

    from mygpt2 import sample, train
    from mygpt2.commands import tokenizer as tokenizer_cli

    start = time.perf_counter()
    tok_path = Path(cfg.data.tokenizer_path)
    if tok_path.is_file():
        print(f"[1/3] tokenizer: reusing {tok_path}")
    else:
        print(f"[1/3] training a {cfg.model.vocab_size}-token BPE tokenizer on {cfg.data.data}")
        tokenizer_cli.cli(["train", *args])
    print("[2/3] training the model (data is tokenized on first use)")
    train.train(cfg)
    print("[3/3] sampling")
    sample.sample(cfg)
    out = Path(cfg.train.out_dir)
    print(
        f"\ndemo finished in {time.perf_counter() - start:.0f}s. See {out / 'loss_plot.png'}, "
        f"{out / 'generated.txt'}; sample more with: mygpt2 sample --out_dir {out}"
    )
