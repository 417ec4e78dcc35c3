"""`mygpt2 train` / `run_train.py`: train a GPT from scratch, from GPT-2 weights, or --resume."""

from __future__ import annotations

from mygpt2.commands.args import ALL, Command, help_text, no_positional, parse, wants_help

COMMAND = Command(
    name="train",
    usage="""usage: mygpt2 train [--config run.toml] [--preset NAME] [--resume] [--FLAG VALUE ...]
       torchrun --nproc_per_node=N run_train.py [...]

Train a GPT on --data with the tokenizer at --tokenizer_path (or GPT-2's, --use_tiktoken).
Writes checkpoint.pt, metrics.jsonl and loss_plot.png to --out_dir. --resume continues a run:
settings come from its checkpoint, flags given now take precedence (the shape cannot change).""",
    sections={
        "model": ALL,
        "run": ("out_dir", "init_from", "device", "dtype", "seed"),
        "train": ALL,
        "data": ALL,
        "tokenizer": ("use_tiktoken", "tokenizer_path", "tiktoken_file"),
    },
)


def cli(argv: list[str]) -> None:
    if wants_help(argv):
        print(help_text(COMMAND))
        return
    args = parse(argv, COMMAND)
    no_positional(args)
    from mygpt2.train import train  # torch is imported only once there is work to do

    train(args.config)
