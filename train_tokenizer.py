"""Train a BPE tokenizer: `python train_tokenizer.py --data PATH --vocab_size N` (same flags as
`mygpt2 tokenizer train`)."""

import sys

from mygpt2.cli import run

if __name__ == "__main__":
    sys.exit(run("tokenizer", ["train", *sys.argv[1:]], whole_process=True))
