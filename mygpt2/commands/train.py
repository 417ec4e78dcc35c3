"""`mygpt2 train` / `run_train.py`: train a GPT from scratch, from GPT-2 weights, or --resume.

The library never reads `sys.argv`: this command tells `train` its flags and how it was
started (`launcher`), which make the resume line a stopped run prints and the command its
lock file records.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path

from mygpt2.commands.args import ALL, Command, read_args

COMMAND = Command(
    name="train",
    usage="""usage: mygpt2 train [--config run.toml] [--preset NAME] [--resume] [--FLAG VALUE ...]
       torchrun --nproc_per_node=N run_train.py [...]

Train a GPT on --data with the tokenizer at --tokenizer_path (or GPT-2's, --use_tiktoken).
Writes checkpoint.pt, metrics.jsonl and loss_plot.png to --out_dir. --resume continues a run:
settings come from its checkpoint, flags given now take precedence (the shape cannot change).
An out_dir holding a run is never replaced silently: --resume, another --out_dir, or
--overwrite. Exit status: 0 finished (or --stop_at), 1 a fault while training, 2 bad usage or
input, 130/143 stopped by SIGINT/SIGTERM after saving (the resume line says how to go on).""",
    sections={
        "model": ALL,
        "run": ("out_dir", "init_from", "device", "dtype", "seed", "overwrite", "break_lock"),
        "train": ALL,
        "data": ALL,
        "tokenizer": ("use_tiktoken", "tokenizer_path", "tiktoken_file"),
    },
)


def launcher(subcommand: str, argv0: str, env: Mapping[str, str] = os.environ) -> str:
    """How this process was started, up to its flags (`argv0`: sys.argv[0]): `mygpt2 train`,
    `python run_train.py`, or `torchrun --nproc_per_node=N run_train.py` (torchrun's `env`)."""
    script = argv0.endswith(".py") and Path(argv0).name not in ("cli.py", "__main__.py")
    program = shlex.quote(argv0) if script else f"mygpt2 {subcommand}"
    if "LOCAL_WORLD_SIZE" not in env:  # not started by torchrun
        return f"python {program}" if script else program
    local, world = int(env["LOCAL_WORLD_SIZE"]), int(env.get("WORLD_SIZE", 1))
    nodes = "" if world == local else f" --nnodes={world // local} [your rendezvous flags]"
    target = program if script else f"-m mygpt2.cli {subcommand}"
    return f"torchrun --nproc_per_node={local}{nodes} {target}"


def cli(argv: list[str]) -> int:
    """Train; the exit status is 0, or 128 + the signal that stopped the run after saving."""
    args = read_args(argv, COMMAND)
    if args is None:
        return 0
    # torch is imported only once there is work to do
    from mygpt2.guard import exit_code
    from mygpt2.train import train

    program = launcher("train", sys.argv[0] if sys.argv else "")
    return exit_code(train(args.config, argv, program))
