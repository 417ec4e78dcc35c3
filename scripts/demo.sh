#!/usr/bin/env bash
# The one-command demo: set up, then train a tokenizer, prepare data, train a small GPT on the
# Python standard library's sources (offline, CPU), and sample from it. Outputs land in out-demo/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh demo  # the package alone: the demo needs none of the test tools
exec .venv/bin/mygpt2 demo "$@"
