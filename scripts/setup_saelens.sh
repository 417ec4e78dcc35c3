#!/usr/bin/env bash
# SAELens for the tests that hold mygpt2's SAE files against it (tests/test_sae_lens.py).
# SAELens 6.x requires transformer-lens<4, while .venv pins transformer_lens 4.3 (its bridge
# is the reference of other tests), and SAELens 6.x does not import against 4.x (it imports
# transformer_lens.HookedTransformer, removed in 4.0). So SAELens and the TransformerLens 3.x
# it needs go, with --no-deps, into their own directory, .venv/sae-lens, which the tests put
# first on PYTHONPATH of a subprocess; everything else (torch, transformers, safetensors, ...)
# comes from .venv. The three small packages below are the imports SAELens needs beyond
# .venv's. Idempotent: skipped when the directory holds these versions.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
target=.venv/sae-lens
pins="sae-lens==6.54.12 transformer-lens==3.9.0 better-abc==0.0.3 simple-parsing==0.1.9 docstring-parser==0.18.0"
if [ "$(cat "$target/.pins" 2>/dev/null)" != "$pins" ]; then
    echo "installing SAELens for the SAE tests into $target"
    rm -rf "$target"
    # shellcheck disable=SC2086
    .venv/bin/python -m pip install --quiet --no-deps --target "$target" $pins
    echo "$pins" > "$target/.pins"
fi
