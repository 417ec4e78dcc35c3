"""Tokenize a corpus into train.bin / val.bin (the original myGPT2 entry): same as `mygpt2 prepare`.

python import_data.py --data corpus.txt [--use_tiktoken true] [--FIELD VALUE ...]
"""

import sys

from mygpt2.cli import run

if __name__ == "__main__":
    sys.exit(run("prepare", sys.argv[1:], whole_process=True))
