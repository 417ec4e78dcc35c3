#!/usr/bin/env bash
# Create .venv (once) and install mygpt2 into it: bash scripts/setup.sh [demo|dev]
#   demo: the package alone (pip install -e .), all that `mygpt2 demo` needs (demo.sh);
#   dev:  the package with its test tools (pip install -e ".[dev]", about 2 GB: transformers,
#         TransformerLens, nnsight, playwright, lm-eval, ...) and SAELens beside it (test.sh).
# The default is dev. Safe to run again: it reinstalls only when pyproject.toml, TORCH_SPEC or
# the profile changed. The stamp records which profile is installed, so the tests after the
# demo upgrade .venv to dev, and a dev install serves the demo as it is.
# TORCH_SPEC picks the PyTorch build: the default pins the release this project is tested with;
# set e.g. TORCH_SPEC=torch to take your platform's newest build instead.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
profile=${1:-dev}
case "$profile" in
    demo) package="." ;;
    dev) package=".[dev]" ;;
    *)
        echo "usage: bash scripts/setup.sh [demo|dev] (got '$profile')" >&2
        exit 2
        ;;
esac
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
stamp=".venv/.mygpt2-installed"
inputs="$(sha256sum pyproject.toml | cut -d' ' -f1) ${TORCH_SPEC:-torch==2.13.0}"
have="$(cat "$stamp" 2>/dev/null || true)"
# "$inputs" alone is a stamp written before profiles existed: it was a dev install
if [ "$have" != "$inputs dev" ] && [ "$have" != "$inputs" ] && [ "$have" != "$inputs $profile" ]; then
    echo "installing mygpt2 ($profile: pip install -e \"$package\") into .venv"
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet "${TORCH_SPEC:-torch==2.13.0}"
    .venv/bin/python -m pip install --quiet -e "$package"
    echo "$inputs $profile" > "$stamp"
fi
if [ "$profile" = dev ]; then
    # SAELens for tests/test_sae_lens.py, beside .venv (it pins transformer-lens<4): see the script
    bash scripts/setup_saelens.sh
fi
