"""Sample from a trained model (the original myGPT2 entry point): same as `mygpt2 sample`.

python run_pretrained.py              # writes out/generated.txt
python run_pretrained.py --prompt     # interactive prompt
"""

import sys

from mygpt2.cli import run

if __name__ == "__main__":
    sys.exit(run("sample", sys.argv[1:], whole_process=True))
