"""`mygpt2 train` / `run_train.py`: train a GPT from scratch, from GPT-2 weights, or --resume."""

from __future__ import annotations

from mygpt2.config import flags_help, load_config
from mygpt2.errors import MyGPT2Error
from mygpt2.train import train


def cli(argv: list[str]) -> None:
    """`mygpt2 train` / `run_train.py`: train with config flags."""
    if "-h" in argv or "--help" in argv:
        print(
            "usage: mygpt2 train [--config run.toml] [--preset NAME] [--FIELD VALUE ...]\n\n"
            "flags (every config field):\n" + flags_help()
        )
        return
    cfg, _, positional = load_config(argv)
    if positional:
        raise MyGPT2Error(f"unexpected argument '{positional[0]}': flags look like --name value.")
    train(cfg)
