"""`mygpt2 prepare` / `import_data.py`: tokenize a corpus into train.bin / val.bin now."""

from __future__ import annotations

from mygpt2.config import flags_help, load_config
from mygpt2.corpus import open_corpus
from mygpt2.errors import MyGPT2Error
from mygpt2.prepare import prepare, read_meta

USAGE = """usage: mygpt2 prepare [DATA] [--flag value ...]

Tokenize a corpus into train.bin, val.bin and meta.json. DATA (or --data) is a text file,
a directory, a glob, stdlib, shakespeare, or hf:NAME[:CONFIG]. Unchanged inputs are reused.
"""


def cli(argv: list[str]) -> None:
    """`mygpt2 prepare`: tokenize the corpus now and print where the files went."""
    from mygpt2.tokenizer import load_tokenizer

    if "-h" in argv or "--help" in argv:
        print(USAGE + "\nflags:\n" + flags_help())
        return
    cfg, _, positional = load_config(argv)
    if len(positional) > 1:
        raise MyGPT2Error(f"prepare takes at most one DATA argument, got {len(positional)}.")
    if positional:
        cfg.data.data = positional[0]
    corpus = open_corpus(cfg.data)  # a wrong --data is reported before tokenizer problems
    tok = load_tokenizer(cfg.data)
    directory = prepare(cfg, tok, corpus=corpus)
    meta = read_meta(directory)
    print(
        f"{directory}: {meta['train_tokens']:,} train and {meta['val_tokens']:,} val tokens "
        f"({meta['dtype']}, tokenizer {meta['tokenizer']['name']}) from "
        f"{meta['source']['description']}"
    )
