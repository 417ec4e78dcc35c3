"""Helpers shared by several test files: tiny models and prompts (test_model.py,
test_generate.py, test_hf.py) and the hypothesis text strategy (test_tokenizer.py, test_bpe.py).

Imported as `from models import ...`: pytest puts this directory on sys.path (rootdir-relative
test files without an `__init__.py`, the default "prepend" import mode). Every model is built
inside the test process, random-initialised and tiny: nothing is downloaded.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, settings, strategies as st

from mygpt2.config import ModelConfig
from mygpt2.model import GPT

# (n_layer, n_head, n_embd, n_positions, vocab_size): vary every dimension
SHAPES = [
    (1, 1, 16, 48, 50),
    (2, 4, 32, 64, 97),
    (3, 2, 48, 40, 300),
]


def hf_model(shape: tuple[int, int, int, int, int], seed: int = 0):
    """A random-initialised HF GPT2LMHeadModel of the given shape, in eval mode."""
    transformers = pytest.importorskip("transformers")
    n_layer, n_head, n_embd, n_positions, vocab_size = shape
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        n_positions=n_positions,
        vocab_size=vocab_size,
        bos_token_id=None,  # no end-of-text token: HF must not stop early
        eos_token_id=None,
    )
    return transformers.GPT2LMHeadModel(config).eval()


def tiny_gpt(seed: int = 0, **overrides) -> GPT:
    """A small model of our own, in eval mode."""
    torch.manual_seed(seed)
    cfg = dict(n_layers=2, n_heads=2, n_emb=32, T=24, vocab_size=61)
    cfg.update(overrides)
    return GPT(ModelConfig(**cfg)).eval()


def prompt_ids(vocab_size: int, length: int, seed: int = 1) -> list[int]:
    """`length` random token ids below `vocab_size`, reproducible by `seed`."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (length,), generator=g).tolist()


# database=None: hypothesis would otherwise keep examples in .hypothesis/ in the working dir
FAST = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
# arbitrary Unicode, plus a dense mix of the characters the split patterns care about
unicode_text = st.text(max_size=80) | st.text(
    alphabet=st.sampled_from(list("aAé日 \t\n\r'sdlv0123.,!?-_\u00a0\u2028😀")), max_size=80
)
