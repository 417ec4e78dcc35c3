"""`mygpt2 sample` / `run_pretrained.py`: continue a start text, or an interactive prompt."""

from __future__ import annotations

from mygpt2.commands.args import ALL, Command, help_text, no_positional, parse, wants_help

COMMAND = Command(
    name="sample",
    usage="""usage: mygpt2 sample [--start TEXT | --start FILE:path] [--prompt] [--FLAG VALUE ...]

Continue a start text with a trained model (--out_dir or --checkpoint) or GPT-2 weights
(--init_from gpt2|DIR), streaming to the terminal and writing out_dir/generated.txt.
--prompt opens an interactive prompt instead.""",
    sections={
        "run": ("out_dir", "checkpoint", "init_from", "device", "dtype", "seed"),
        "tokenizer": ("use_tiktoken", "tokenizer_path", "tiktoken_file"),
        "sample": ALL,
    },
)


def cli(argv: list[str]) -> None:
    if wants_help(argv):
        print(help_text(COMMAND))
        return
    args = parse(argv, COMMAND)
    no_positional(args)
    from mygpt2.generate import check_sampling
    from mygpt2.sample import interactive, sample

    s = args.config.sample
    check_sampling(s.temperature, s.top_k or None, s.top_p)  # before loading any weights
    if s.prompt:
        interactive(args.config)
    else:
        sample(args.config)
