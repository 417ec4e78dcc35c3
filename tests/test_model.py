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
from mygpt2.generate import KVCache
from mygpt2.model import GPT

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


def test_cache_chunks_of_several_tokens_match_full_forward():
    # a chunk of t > 1 new tokens after a cached prefix goes through KVCache.causal_mask: token
    # i of the chunk must see every cached key and the chunk's keys up to i, no further
    model = tiny_gpt(seed=15, n_layers=3)
    idx = torch.tensor([prompt_ids(61, 20), prompt_ids(61, 20, seed=2)])
    cache = KVCache.empty(model.config, 2, torch.device("cpu"), torch.float32)
    with torch.no_grad():
        full, _ = model(idx)
        end = 0
        for size in (5, 3, 4, 1, 2, 5):  # a prefill, then chunks continuing the cache
            step, _ = model(idx[:, end : end + size], cache=cache)
            end += size
            assert cache.length == end and step.shape == (2, 1, 61)  # last position only
            torch.testing.assert_close(step[:, -1], full[:, end - 1], atol=1e-5, rtol=0)
    assert end == 20


def test_chunk_after_left_padded_prefill_matches_each_alone():
    model = tiny_gpt(seed=17, T=20)
    prompts = [prompt_ids(61, n, seed=n) for n in (2, 7, 4)]
    L = max(len(p) for p in prompts)
    tokens = torch.tensor([[0] * (L - len(p)) + p for p in prompts])
    cache = KVCache.empty(model.config, len(prompts), torch.device("cpu"), torch.float32)
    cache.pad = torch.tensor([L - len(p) for p in prompts])
    chunk = [9, 3, 30]  # three new tokens at once, the same for every row
    with torch.no_grad():
        model(tokens, cache=cache)
        step, _ = model(torch.tensor([chunk] * len(prompts)), cache=cache)
        for i, p in enumerate(prompts):
            alone, _ = model(torch.tensor([p + chunk]))
            torch.testing.assert_close(step[i, -1], alone[0, -1], atol=1e-5, rtol=0)


# ------------------------------------------------------------------ dropout


def test_dropout_only_in_training_mode():
    model = tiny_gpt(seed=16, dropout=0.1)
    plain = tiny_gpt(seed=99, dropout=0.0)
    plain.load_state_dict(model.state_dict())
    idx = torch.tensor([prompt_ids(61, 24), prompt_ids(61, 24, seed=3)])
    with torch.no_grad():
        model.eval()
        first, second = model(idx)[0], model(idx)[0]
        assert torch.equal(first, second)
        torch.testing.assert_close(first, plain(idx)[0], atol=1e-6, rtol=0)
        cache = KVCache.empty(model.config, 2, torch.device("cpu"), torch.float32)
        torch.testing.assert_close(model(idx, cache=cache)[0], first[:, -1:], atol=1e-5, rtol=0)
        model.train()
        assert not torch.allclose(model(idx)[0], model(idx)[0])
        # attention dropout on its own: every nn.Dropout off, only the attention's dropout_p
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        assert not torch.allclose(model(idx)[0], model(idx)[0])
        model.eval()
        torch.testing.assert_close(model(idx)[0], first, atol=1e-6, rtol=0)


def test_each_dropout_module_follows_its_own_mode():
    """Monte Carlo dropout: a model in eval with its dropout modules switched back to train
    still drops (the skip of eval's identity calls reads each module's own flag); and the
    modules in eval inside a training model drop nothing but the attention's own dropout_p."""
    model = tiny_gpt(seed=16, dropout=0.3)
    idx = torch.tensor([prompt_ids(61, 24)])
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert len(dropouts) == 1 + 2 * model.config.n_layers  # embeddings, each attn and mlp
    with torch.no_grad():
        model.eval()
        clean = model(idx)[0]
        for m in dropouts:
            m.train()
        assert not torch.allclose(model(idx)[0], model(idx)[0])
        model.train()
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.eval()
        for block in model.transformer.h:
            block.attn.eval()  # its SDPA dropout_p reads the attention module's mode
        torch.testing.assert_close(model(idx)[0], clean, atol=1e-6, rtol=0)


# ------------------------------------------------------------------ sizes by hand


def test_parameter_and_flop_counts_by_hand():
    L, C, T, V = 2, 32, 24, 61
    model = tiny_gpt(n_layers=L, n_emb=C, T=T, vocab_size=V)
    matmuls = L * (C * 3 * C + C * C + C * 4 * C + 4 * C * C)  # c_attn, c_proj, c_fc, c_proj
    small = L * (3 * C + C + 4 * C + C + 2 * 2 * C) + 2 * C  # biases, ln_1, ln_2, then ln_f
    assert model.num_params() == V * C + T * C + matmuls + small  # the tied head counted once
    assert model.num_params(non_embedding=True) == matmuls + small
    assert model.flops_per_token() == 6 * (matmuls + V * C) + 12 * L * C * T
    assert model.flops_per_token(T=10) == 6 * (matmuls + V * C) + 12 * L * C * 10


@pytest.mark.parametrize(("vocab_size", "padded"), [(100, 128), (128, 128), (129, 192)])
def test_pad_vocab_rounds_up_to_a_multiple_of_64(vocab_size, padded):
    model = tiny_gpt(vocab_size=vocab_size, pad_vocab=True)
    assert model.padded_vocab_size == padded
    assert model.transformer.wte.weight.shape == (padded, 32)
    assert tiny_gpt(vocab_size=vocab_size).padded_vocab_size == vocab_size


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pad_vocab_padding_is_no_part_of_the_distribution(dtype):
    """With pad_vocab every tool sees one distribution, over the real vocabulary: the training
    loss (fused and plain), evaluation, the logits and `hook_logits`, in a full forward and in
    cached generation (whose head copy holds the real rows only). The padding rows get no
    gradient."""
    from torch.nn import functional as F

    from mygpt2.generate import generate
    from mygpt2.train import evaluate

    model = tiny_gpt(seed=7, vocab_size=270, pad_vocab=True, T=16)  # 320 rows in the head
    x = torch.randint(0, 270, (3, 16), generator=torch.Generator().manual_seed(1))
    y = torch.roll(x, -1, dims=1)
    with torch.no_grad():
        h = model.hidden(x).double()  # by hand, float64, over the first 270 rows only
        w = model.lm_head.weight.detach().double()[:270]
        want = F.cross_entropy((h @ w.T).reshape(-1, 270), y.reshape(-1)).item()
    with torch.autocast("cpu", torch.bfloat16, enabled=dtype == torch.bfloat16):
        fused = model(x, y, return_logits=False)[1]  # the training path
        with torch.no_grad():
            logits, plain = model(x, y)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert logits.shape == (3, 16, 270)
    assert fused.item() == pytest.approx(want, rel=tol)
    assert plain.item() == pytest.approx(want, rel=tol)
    assert evaluate(model, [(x, y)], dtype=dtype) == pytest.approx(want, rel=tol)
    fused.backward()
    grad = model.lm_head.weight.grad
    assert grad[:270].abs().sum() > 0 and torch.equal(grad[270:], torch.zeros_like(grad[270:]))

    seen = []
    with torch.no_grad(), model.hooks(fwd_hooks=[("hook_logits", lambda t, n: seen.append(t))]):
        model(x)
        cached = generate(model, x[0, :5].tolist(), 3, temperature=0)
        uncached = generate(model, x[0, :5].tolist(), 3, temperature=0, use_cache=False)
    assert {t.shape[-1] for t in seen} == {270}
    assert cached == uncached


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_a_hook_editing_a_norms_scale_or_normalized_input_changes_the_output(norm):
    """Without gradients too, an edit at hook_scale or hook_normalized is what flows on (only
    hooks that look leave the fused norm's output): by hand, doubled scale halves the
    normalized input, and a zeroed one leaves the bias alone."""
    model = tiny_gpt(seed=11, norm=norm)
    ln = model.transformer.ln_f
    with torch.no_grad():
        ln.weight.normal_(1.0, 0.3)
        if getattr(ln, "bias", None) is not None:
            ln.bias.normal_(0.0, 0.3)
    idx = torch.tensor([prompt_ids(61, 9)])
    with torch.no_grad():
        resid = model.run_with_cache(idx, ["blocks.1.hook_resid_post"])[1][
            "blocks.1.hook_resid_post"
        ]
        centred = resid if norm == "rmsnorm" else resid - resid.mean(-1, keepdim=True)
        normalized = centred / (centred.pow(2).mean(-1, keepdim=True) + ln.eps).sqrt()
        bias = getattr(ln, "bias", None)
        bias = 0.0 if bias is None else bias
        for name, edit, want in [
            ("ln_final.hook_scale", lambda x, n: x * 2, normalized / 2 * ln.weight + bias),
            ("ln_final.hook_normalized", lambda x, n: torch.zeros_like(x), bias + 0 * resid),
        ]:
            with model.hooks(fwd_hooks=[(name, edit)]):
                logits = model(idx)[0]
            torch.testing.assert_close(logits, model.head(want), msg=name)


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_a_hook_writing_in_place_at_a_norm_or_the_pattern_still_edits(mode):
    """A hook that writes into the activation it is given and returns None edits it, at the
    points where hooks that only look leave the fused kernels' output: the same logits as a
    hook returning the edited tensor (under inference mode too, which keeps no versions)."""
    model = tiny_gpt(seed=12)
    idx = torch.tensor([prompt_ids(61, 9)])

    def in_place(x, name):
        x.mul_(0.5)

    def replacing(x, name):
        return x * 0.5

    for name in (
        "ln_final.hook_normalized",
        "blocks.0.ln1.hook_scale",
        "blocks.1.attn.hook_pattern",
    ):
        with mode():
            plain = model(idx)[0]
            with model.hooks(fwd_hooks=[(name, in_place)]):
                written = model(idx)[0]
            with model.hooks(fwd_hooks=[(name, replacing)]):
                want = model(idx)[0]
        assert not torch.allclose(want, plain), name
        torch.testing.assert_close(written, want, msg=name)


def test_crop_context_keeps_the_first_positions():
    model = tiny_gpt(seed=18, T=24)
    wpe = model.transformer.wpe.weight.detach().clone()
    idx = torch.tensor([prompt_ids(61, 10)])
    with torch.no_grad():
        before = model(idx)[0]
        model.crop_context(10)
        assert model.config.T == 10
        assert torch.equal(model.transformer.wpe.weight, wpe[:10])
        torch.testing.assert_close(model(idx)[0], before, atol=0, rtol=0)
        with pytest.raises(ValueError, match="longer than the context length T=10"):
            model(torch.tensor([prompt_ids(61, 11)]))
    for bad in (0, 11, 24):
        with pytest.raises(ValueError, match=r"1\.\.10"):
            model.crop_context(bad)
