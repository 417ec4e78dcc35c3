"""`mygpt2 prepare` / `import_data.py`: tokenize a corpus into train.bin / val.bin now."""

from __future__ import annotations

from mygpt2.commands.args import ALL, Command, UsageError, read_args

COMMAND = Command(
    name="prepare",
    usage="""usage: mygpt2 prepare [DATA] [--FLAG VALUE ...]

Tokenize a corpus into train.bin, val.bin and meta.json. DATA (or --data) is a text file,
a directory, a glob, stdlib, shakespeare, or hf:NAME[:CONFIG]. Unchanged inputs are reused.""",
    sections={"data": ALL, "tokenizer": ("use_tiktoken", "tokenizer_path", "tiktoken_file")},
)


def cli(argv: list[str]) -> None:
    args = read_args(argv, COMMAND, positional=True)
    if args is None:
        return
    if len(args.positional) > 1:
        raise UsageError(f"prepare takes at most one DATA argument, got {len(args.positional)}.")
    cfg = args.config
    if args.positional:
        cfg.set("data", args.positional[0], "flag")
    from mygpt2.corpus import open_corpus
    from mygpt2.prepare import prepare, read_meta
    from mygpt2.tokenizer import load_tokenizer

    corpus = open_corpus(cfg.data)  # a wrong --data is reported before tokenizer problems
    tok = load_tokenizer(cfg.tokenizer, cfg.data.data)
    directory = prepare(cfg, tok, corpus=corpus)
    meta = read_meta(directory)
    print(
        f"{directory}: {meta['train_tokens']:,} train and {meta['val_tokens']:,} val tokens "
        f"({meta['dtype']}, tokenizer {meta['tokenizer']['name']}) from "
        f"{meta['source']['description']}"
    )
