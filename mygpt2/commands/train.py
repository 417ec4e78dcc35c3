"""`mygpt2 train` / `run_train.py`: train a GPT from scratch, from GPT-2 weights, or --resume."""

from __future__ import annotations

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


def cli(argv: list[str]) -> int:
    """Train; the exit status is 0, or 128 + the signal that stopped the run after saving."""
    args = read_args(argv, COMMAND)
    if args is None:
        return 0
    # torch is imported only once there is work to do
    from mygpt2.guard import exit_code, launcher
    from mygpt2.train import train

    return exit_code(train(args.config, argv, launcher("train")))
