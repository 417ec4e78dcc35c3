#!/usr/bin/env bash
# Create .venv (once) and install mygpt2 with its test tools into it.
# Run by demo.sh and test.sh; safe to run again (it reinstalls only when pyproject.toml changed).
# TORCH_SPEC picks the PyTorch build: the default pins the release this project is tested with;
# set e.g. TORCH_SPEC=torch to take your platform's newest build instead.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
stamp=".venv/.mygpt2-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1) ${TORCH_SPEC:-torch==2.13.0}"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "installing mygpt2 and its dependencies into .venv (first run only)"
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet "${TORCH_SPEC:-torch==2.13.0}"
    .venv/bin/python -m pip install --quiet -e ".[dev]"
    echo "$want" > "$stamp"
fi
# SAELens for tests/test_sae_lens.py, beside .venv (it pins transformer-lens<4): see the script
bash scripts/setup_saelens.sh
