"""`mygpt2 sample` / `run_pretrained.py`: continue a start text, or an interactive prompt."""

from __future__ import annotations

from mygpt2.config import flags_help, load_config
from mygpt2.errors import MyGPT2Error
from mygpt2.sample import interactive, sample


def cli(argv: list[str]) -> None:
    """`mygpt2 sample` / `run_pretrained.py`."""
    if "-h" in argv or "--help" in argv:
        print(
            "usage: mygpt2 sample [--start TEXT | --start FILE:path] [--prompt] "
            "[--init_from gpt2|DIR] [--FIELD VALUE ...]\n\nflags (every config field):\n"
            + flags_help()
        )
        return
    cfg, _, positional = load_config(argv)
    if positional:
        raise MyGPT2Error(f"unexpected argument '{positional[0]}': flags look like --name value.")
    if cfg.sample.prompt:
        interactive(cfg)
    else:
        sample(cfg)
