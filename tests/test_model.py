"""The model (mygpt2.model): forward pass, KV cache, dropout, initialisation and sizes.

Generation is tested in test_generate.py, GPT-2 weights in and out in test_hf.py. Models are
tiny and random-initialised inside the tests (see models.py), so the file runs in seconds.
"""

from __future__ import annotations

import math

import pytest
import torch
from models import SHAPES, hf_model, prompt_ids, tiny_gpt

from mygpt2.config import ModelConfig
from mygpt2.model import GPT, KVCache

# ------------------------------------------------------------------ sizes and init


@pytest.mark.parametrize("shape", SHAPES)
def test_num_params_equals_hf(shape):
    hf = hf_model(shape)
    n_layer, n_head, n_embd, n_positions, vocab_size = shape
    cfg = ModelConfig(
        n_layers=n_layer, n_heads=n_head, n_emb=n_embd, T=n_positions, vocab_size=vocab_size
    )
    assert GPT(cfg).num_params() == hf.num_parameters()


def test_init_scales_residual_projections():
    n_layers = 6
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layers=n_layers, n_heads=4, n_emb=256, T=64, vocab_size=500))
    c_proj = torch.cat(
        [p.flatten() for n, p in model.named_parameters() if n.endswith("c_proj.weight")]
    )
    assert c_proj.std().item() == pytest.approx(0.02 / math.sqrt(2 * n_layers), rel=0.03)
    c_fc = torch.cat(
        [p.flatten() for n, p in model.named_parameters() if n.endswith("c_fc.weight")]
    )
    assert c_fc.std().item() == pytest.approx(0.02, rel=0.03)
    assert model.lm_head.weight is model.transformer.wte.weight


# ------------------------------------------------------------------ KV cache


def test_cache_logits_match_full_forward():
    model = tiny_gpt(seed=12)
    idx = torch.tensor([prompt_ids(61, 20)])
    cache = KVCache.empty(model.config, 1, torch.device("cpu"), torch.float32)
    with torch.no_grad():
        full, _ = model(idx)
        step, _ = model(idx[:, :12], cache=cache)
        torch.testing.assert_close(step[:, -1], full[:, 11], atol=1e-5, rtol=0)
        for i in range(12, 20):
            step, _ = model(idx[:, i : i + 1], cache=cache)
            torch.testing.assert_close(step[:, -1], full[:, i], atol=1e-5, rtol=0)


def test_left_padded_batch_logits_equal_each_alone():
    model = tiny_gpt(seed=14, T=20)
    prompts = [prompt_ids(61, n, seed=n) for n in (3, 9, 1)]
    L = max(len(p) for p in prompts)
    tokens = torch.tensor([[0] * (L - len(p)) + p for p in prompts])
    cache = KVCache.empty(model.config, len(prompts), torch.device("cpu"), torch.float32)
    cache.pad = torch.tensor([L - len(p) for p in prompts])
    following = [5, 7, 11]  # the same next tokens for every row, one step at a time
    with torch.no_grad():
        logits, _ = model(tokens, cache=cache)
        steps = [logits[:, -1]]
        for tok in following:
            logits, _ = model(torch.full((len(prompts), 1), tok), cache=cache)
            steps.append(logits[:, -1])
        for i, p in enumerate(prompts):
            alone, _ = model(torch.tensor([p + following]))
            for j, step in enumerate(steps):
                expected = alone[0, len(p) - 1 + j]
                torch.testing.assert_close(step[i], expected, atol=1e-5, rtol=0)
