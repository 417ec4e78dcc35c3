"""Train a GPT (the original myGPT2 entry point): same as `mygpt2 train`.

python run_train.py [--resume] [--FIELD VALUE ...]
torchrun --nproc_per_node=4 run_train.py
"""

import sys

from mygpt2.cli import run

if __name__ == "__main__":
    sys.exit(run("train", sys.argv[1:], whole_process=True))
