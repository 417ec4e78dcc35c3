"""Original myGPT2 entry point: load the corpus into token files (`mygpt2 prepare`)."""

import sys

from mygpt2.cli import run

sys.exit(run("prepare", sys.argv[1:]))
