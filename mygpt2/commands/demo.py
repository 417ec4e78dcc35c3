"""The one-command demo: the whole pipeline, offline, on a CPU, in a few minutes.

1. train a BPE tokenizer on the built-in `stdlib` corpus (the Python standard library's own
   sources, always present, so no download is needed);
2. tokenize that corpus into train/val token files (done by training on first use);
3. train a small GPT on it;
4. sample Python-looking code from it into `generated.txt`.

Everything lands in `out_dir` (default `out-demo/`): tokenizer.json, checkpoint.pt,
metrics.jsonl, loss_plot.png, health.png (every 50 steps: see docs/DYNAMICS.md),
generated.txt. Any config flag overrides the demo's settings, e.g. `mygpt2 demo --max_steps
100` for a quicker look.

Run twice, the demo starts over in its own `out-demo/` (it passes --overwrite there, reusing
the tokenizer); --resume continues its run instead. Another --out_dir is treated like any
training run's: a run already there is never replaced unless --overwrite is given.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from mygpt2.commands.args import ALL, Command, read_args
from mygpt2.config import SECTIONS, Config, validate

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
    "health_interval": "50",  # health.png beside loss_plot.png (about 0.3% of the run's time)
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


COMMAND = Command(
    name="demo",
    usage="usage: mygpt2 demo [--FLAG VALUE ...]\n\n" + (__doc__ or "").split("\n\n", 1)[1],
    sections={section: ALL for section in SECTIONS},
    defaults=DEMO_SETTINGS,
)


def own_out_dir(cfg: Config) -> bool:
    """Whether out_dir is the demo's own `out-demo/`, which a new demo run may replace."""
    return Path(cfg.run.out_dir).resolve() == Path(DEMO_SETTINGS["out_dir"]).resolve()


def cli(argv: list[str]) -> int:
    """`mygpt2 demo`: tokenizer, data, training and sampling in one go."""
    args = read_args(argv, COMMAND)
    if args is None:
        return 0
    cfg = args.config
    for key, value in DEMO_SETTINGS.items():  # the user's flags and files win
        if key not in cfg.given:
            cfg.set(key, value, "demo")
    if "tokenizer_path" not in cfg.given:
        cfg.set("tokenizer_path", str(Path(cfg.run.out_dir) / "tokenizer.json"), "demo")
    if own_out_dir(cfg) and not cfg.train.resume and "overwrite" not in cfg.given:
        cfg.set("overwrite", True, "demo")  # the demo's own directory: start over
    validate(cfg)

    from mygpt2.commands.tokenizer import train_tokenizer
    from mygpt2.commands.train import launcher
    from mygpt2.guard import check_request, exit_code, refuse_overwrite
    from mygpt2.sample import sample
    from mygpt2.train import train

    check_request(cfg)  # before the tokenizer is trained; training checks again, under the lock
    refuse_overwrite(cfg)

    start = time.perf_counter()
    tok_path = Path(cfg.tokenizer.tokenizer_path)
    if tok_path.is_file():
        print(f"[1/3] tokenizer: reusing {tok_path}")
    else:
        print(f"[1/3] training a {cfg.model.vocab_size}-token BPE tokenizer on {cfg.data.data}")
        train_tokenizer(cfg)
    cfg.given.pop("vocab_size")  # the model takes the tokenizer's size, whatever it reached
    print("[2/3] training the model (data is tokenized on first use)")
    summary = train(cfg, argv, launcher("demo", sys.argv[0] if sys.argv else ""))
    if summary["signal"]:  # stopped by SIGINT/SIGTERM: saved, and the resume line printed
        return exit_code(summary)
    print("[3/3] sampling")
    sample(cfg)
    out = Path(cfg.run.out_dir)
    print(
        f"\ndemo finished in {time.perf_counter() - start:.0f}s. See {out / 'loss_plot.png'}, "
        f"{out / 'generated.txt'}; sample more with: mygpt2 sample --out_dir {out}"
    )
    return 0
