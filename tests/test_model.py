"""Model, generation and GPT-2 weights in/out, held against Hugging Face `transformers`.

Every HF model here is random-initialised and built inside the test (no download): parity is
about the architecture and the weight mapping, which random weights exercise as well as
OpenAI's. Shapes are tiny so the whole file runs in seconds on a CPU.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mygpt2.config import ModelConfig
from mygpt2.errors import MyGPT2Error
from mygpt2.generate import generate, generate_stream, sample_next
from mygpt2.hf import from_pretrained, save_pretrained, save_safetensors
from mygpt2.model import GPT

transformers = pytest.importorskip("transformers")

# (n_layer, n_head, n_embd, n_positions, vocab_size): vary every dimension
SHAPES = [
    (1, 1, 16, 48, 50),
    (2, 4, 32, 64, 97),
    (3, 2, 48, 40, 300),
]


def hf_model(shape: tuple[int, int, int, int, int], seed: int = 0):
    """A random-initialised HF GPT2LMHeadModel of the given shape, in eval mode."""
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
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (length,), generator=g).tolist()


# --------------------------------------------------------------------- HF parity


@pytest.mark.parametrize("shape", SHAPES)
def test_logits_match_hf_safetensors(tmp_path: Path, shape):
    hf = hf_model(shape)
    hf.save_pretrained(tmp_path)
    ours = from_pretrained(str(tmp_path)).eval()
    idx = torch.randint(0, shape[4], (2, shape[3]))
    with torch.no_grad():
        expected = hf(idx).logits
        logits, _ = ours(idx)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)


def test_logits_match_hf_pytorch_model_bin(tmp_path: Path):
    shape = SHAPES[1]
    hf = hf_model(shape, seed=3)
    hf.save_pretrained(tmp_path / "st")
    # transformers 5 always writes safetensors; write the legacy pickle format by hand
    (tmp_path / "bin").mkdir()
    shutil.copy(tmp_path / "st" / "config.json", tmp_path / "bin" / "config.json")
    torch.save(hf.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    ours = from_pretrained(str(tmp_path / "bin")).eval()
    idx = torch.randint(0, shape[4], (1, 20))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx)[0], hf(idx).logits, atol=1e-4, rtol=0)


def test_ours_to_hf_to_ours_is_bitwise(tmp_path: Path):
    ours = tiny_gpt(seed=5, n_layers=3, n_heads=4, n_emb=32, T=40, vocab_size=77)
    save_pretrained(ours, str(tmp_path))
    back = from_pretrained(str(tmp_path))
    assert back.config == ours.config
    sd, sd_back = ours.state_dict(), back.state_dict()
    assert sd.keys() == sd_back.keys()
    for key in sd:
        assert torch.equal(sd[key], sd_back[key]), key

    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    idx = torch.randint(0, 77, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, ours(idx)[0], atol=1e-4, rtol=0)


def test_model_without_biases_exports_to_hf(tmp_path: Path):
    ours = tiny_gpt(seed=6, bias=False)
    save_pretrained(ours, str(tmp_path))  # HF GPT-2 always has biases: written as zeros
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    idx = torch.randint(0, 61, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, ours(idx)[0], atol=1e-4, rtol=0)


@pytest.mark.parametrize("shape", SHAPES)
def test_greedy_matches_hf_generate(tmp_path: Path, shape):
    hf = hf_model(shape, seed=7)
    hf.save_pretrained(tmp_path)
    ours = from_pretrained(str(tmp_path))
    prompt = prompt_ids(shape[4], 8)
    assert len(prompt) + 32 <= shape[3]  # HF cannot go past n_positions
    x = torch.tensor([prompt])
    with torch.no_grad():
        out = hf.generate(
            x,
            attention_mask=torch.ones_like(x),
            max_new_tokens=32,
            min_new_tokens=32,
            do_sample=False,
            pad_token_id=0,
        )
    expected = out[0, len(prompt) :].tolist()
    assert len(expected) == 32
    assert generate(ours, prompt, 32, temperature=0) == [expected]


@pytest.mark.parametrize("shape", SHAPES)
def test_num_params_equals_hf(shape):
    hf = hf_model(shape)
    n_layer, n_head, n_embd, n_positions, vocab_size = shape
    cfg = ModelConfig(
        n_layers=n_layer, n_heads=n_head, n_emb=n_embd, T=n_positions, vocab_size=vocab_size
    )
    assert GPT(cfg).num_params() == hf.num_parameters()


# ------------------------------------------------------------------ KV cache


def test_cache_matches_no_cache_including_past_T():
    model = tiny_gpt(seed=11, T=16)
    prompt = prompt_ids(61, 5)
    # 40 new tokens: the window slides for the last 29 of them
    cached = generate(model, prompt, 40, temperature=0)
    uncached = generate(model, prompt, 40, temperature=0, use_cache=False)
    assert cached == uncached
    assert len(cached[0]) == 40
    # seeded sampling gives varied tokens, so every window position matters
    kw = dict(temperature=1.0, seed=3)
    sampled = generate(model, prompt, 40, **kw)
    assert sampled == generate(model, prompt, 40, use_cache=False, **kw)
    assert len(set(sampled[0])) > 10


def test_cache_logits_match_full_forward():
    model = tiny_gpt(seed=12)
    from mygpt2.model import KVCache

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
    from mygpt2.model import KVCache

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


def test_batch_of_different_lengths_equals_each_alone():
    model = tiny_gpt(seed=13, T=20)
    prompts = [prompt_ids(61, n, seed=n) for n in (3, 9, 1, 14)]
    # 12 new tokens stay inside T for the short prompts; 30 makes every row slide
    for n_new in (12, 30):
        batched = generate(model, prompts, n_new, temperature=0)
        alone = [generate(model, p, n_new, temperature=0)[0] for p in prompts]
        assert batched == alone


# ------------------------------------------------------------------ sampling


def allowed_tokens(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> set[int]:
    """The top-k set intersected with the nucleus of a 1-D logits vector, computed directly."""
    logits = logits.double()
    keep = torch.ones_like(logits, dtype=torch.bool)
    if top_k is not None:
        kth = torch.sort(logits, descending=True).values[top_k - 1]
        keep &= logits >= kth
    if top_p is not None:
        masked = logits.masked_fill(~keep, float("-inf"))
        probs = torch.softmax(masked, dim=-1)
        total = 0.0
        nucleus = torch.zeros_like(keep)
        for i in torch.argsort(probs, descending=True).tolist():
            nucleus[i] = True
            total += probs[i].item()
            if total >= top_p:
                break
        keep &= nucleus
    return set(torch.nonzero(keep).flatten().tolist())


@pytest.mark.parametrize(
    ("top_k", "top_p", "temperature"),
    [(5, None, 1.0), (None, 0.6, 1.0), (20, 0.9, 0.7), (1, None, 1.3), (None, 0.05, 1.0)],
)
def test_sample_next_stays_in_top_k_and_nucleus(top_k, top_p, temperature):
    g = torch.Generator().manual_seed(0)
    for trial in range(5):
        logits = torch.randn(100, generator=g) * 2
        allowed = allowed_tokens(logits / temperature, top_k, top_p)
        rows = logits.expand(2000, -1)  # 2000 independent draws
        drawn = sample_next(rows, temperature, top_k, top_p, generator=g)
        seen = set(drawn.tolist())
        assert seen <= allowed, f"trial {trial}: drew {sorted(seen - allowed)} outside the set"
        if len(allowed) <= 20:  # and nothing allowed is wrongly excluded
            assert seen == allowed


def test_generate_samples_stay_in_top_k_and_nucleus():
    model = tiny_gpt(seed=21)
    with torch.no_grad():  # sharpen the random model so the nucleus is small
        model.lm_head.weight.mul_(8)
    prompt = prompt_ids(61, 6)
    with torch.no_grad():
        logits = model(torch.tensor([prompt]))[0][0, -1]
    for top_k, top_p in [(4, None), (None, 0.5), (10, 0.8)]:
        allowed = allowed_tokens(logits / 0.9, top_k, top_p)
        first = set()
        for seed in range(40):
            out = generate(model, prompt, 1, temperature=0.9, top_k=top_k, top_p=top_p, seed=seed)
            first.add(out[0][0])
        batch = generate(model, [prompt] * 300, 1, temperature=0.9, top_k=top_k, top_p=top_p)
        first |= {row[0] for row in batch}
        assert first <= allowed


def test_seeded_sampling_is_reproducible():
    model = tiny_gpt(seed=22)
    prompts = [prompt_ids(61, 4), prompt_ids(61, 7, seed=2)]
    kw = dict(temperature=1.0, top_k=30, top_p=0.95)
    a = generate(model, prompts, 30, seed=123, **kw)
    b = generate(model, prompts, 30, seed=123, **kw)
    c = generate(model, prompts, 30, seed=124, **kw)
    assert a == b
    assert a != c


def test_stop_tokens_end_a_row():
    model = tiny_gpt(seed=23)
    prompts = [prompt_ids(61, 5), prompt_ids(61, 8, seed=3)]
    kw = dict(temperature=1.0, seed=5)  # seeded: the same draws with and without stops
    free = generate(model, prompts, 12, **kw)
    # the first token of row 0 that is new after the first one: row 0 stops at position j
    j = next(i for i, tok in enumerate(free[0]) if i > 0 and tok not in free[0][:i])
    stop = free[0][j]
    stopped = generate(model, prompts, 12, stop_tokens=[stop], **kw)
    assert stopped[0] == free[0][:j]
    if stop in free[1]:
        assert stopped[1] == free[1][: free[1].index(stop)]
    else:
        assert stopped[1] == free[1]
    # the stream yields the stop token itself, then -1 while the other row goes on
    stream = generate_stream(model, prompts, 12, stop_tokens=[stop], **kw)
    row0 = [step[0].item() for step in stream]
    assert row0[: j + 1] == [*free[0][:j], stop]
    assert all(tok == -1 for tok in row0[j + 1 :])
    # a single row ends the stream at its stop token
    alone = [s.item() for s in generate_stream(model, prompts[:1], 12, stop_tokens=[stop], **kw)]
    assert len(alone) < 12 and alone[-1] == stop and stop not in alone[:-1]
    assert generate(model, prompts[:1], 12, stop_tokens=[stop], **kw) == [alone[:-1]]


def test_padded_vocab_is_never_sampled():
    model = tiny_gpt(seed=24, vocab_size=100, pad_vocab=True)
    assert model.padded_vocab_size == 128
    with torch.no_grad():  # make the padded ids the most likely by far
        # a large final-LayerNorm bias along one axis, and padded embeddings along it alone
        model.transformer.ln_f.bias[0] = 10.0
        model.transformer.wte.weight[100:] = 0.0
        model.transformer.wte.weight[100:, 0] = 1.0
        assert model(torch.tensor([[1, 2, 3]]))[0][0, -1].argmax() >= 100
    prompts = [prompt_ids(100, 3)] * 50
    for out in (
        generate(model, prompts, 5, temperature=0),
        generate(model, prompts, 5, temperature=1.5, seed=0),
        generate(model, prompts, 5, temperature=1.0, top_k=120, top_p=1.0, seed=1),
    ):
        assert max(max(row) for row in out) < 100


# ---------------------------------------------------------------- loss, init, export


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


def test_save_safetensors_round_trip(tmp_path: Path):
    model = tiny_gpt(seed=26)
    path = tmp_path / "model.safetensors"
    save_safetensors(model, str(path))
    fresh = tiny_gpt(seed=99)
    result = fresh.load_state_dict(load_file(str(path)), strict=False)
    assert result.missing_keys == ["lm_head.weight"]  # tied: stored once as wte
    assert not result.unexpected_keys
    for key, value in model.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[key]), key


# ----------------------------------------------------------------- bad input


def test_from_pretrained_missing_files(tmp_path: Path):
    with pytest.raises(MyGPT2Error, match=r"config\.json"):
        from_pretrained(str(tmp_path))
    save_pretrained(tiny_gpt(), str(tmp_path))
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(MyGPT2Error, match=r"model\.safetensors or pytorch_model\.bin"):
        from_pretrained(str(tmp_path))
    with pytest.raises(MyGPT2Error, match="neither a directory"):
        from_pretrained(str(tmp_path / "nowhere"))


def test_from_pretrained_refuses_other_architectures(tmp_path: Path):
    save_pretrained(tiny_gpt(), str(tmp_path))
    cfg = json.loads((tmp_path / "config.json").read_text(encoding="utf-8"))
    cfg["model_type"] = "llama"
    (tmp_path / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    with pytest.raises(MyGPT2Error, match="llama"):
        from_pretrained(str(tmp_path))


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (dict(layer_norm_epsilon=1e-6), "layer_norm_epsilon"),
        (dict(activation_function="relu"), "activation_function"),
        (dict(n_layer=None), "n_layer"),
    ],
)
def test_from_pretrained_refuses_unsupported_settings(tmp_path: Path, change, words):
    save_pretrained(tiny_gpt(), str(tmp_path))
    cfg = json.loads((tmp_path / "config.json").read_text(encoding="utf-8"))
    for key, value in change.items():
        if value is None:
            del cfg[key]
        else:
            cfg[key] = value
    (tmp_path / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    with pytest.raises(MyGPT2Error, match=words):
        from_pretrained(str(tmp_path))


def test_from_pretrained_wrong_shape_names_tensor_and_shapes(tmp_path: Path):
    save_pretrained(tiny_gpt(), str(tmp_path))
    sd = load_file(str(tmp_path / "model.safetensors"))
    sd["transformer.h.1.mlp.c_fc.bias"] = torch.zeros(100)
    save_file(sd, str(tmp_path / "model.safetensors"))
    with pytest.raises(MyGPT2Error) as err:
        from_pretrained(str(tmp_path))
    message = str(err.value)
    assert "transformer.h.1.mlp.c_fc.bias" in message
    assert "(100,)" in message and "(128,)" in message


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        (dict(top_k=0), "top_k"),
        (dict(top_k=-3), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(temperature=-0.1), "temperature"),
    ],
)
def test_generate_rejects_bad_settings(kw, words):
    with pytest.raises(MyGPT2Error, match=words):
        generate(tiny_gpt(), [1, 2], 3, **kw)


def test_generate_rejects_empty_prompt():
    model = tiny_gpt()
    for empty in ([], [[]], [[1, 2], []]):
        with pytest.raises(MyGPT2Error, match="empty prompt"):
            generate(model, empty, 3)


def test_long_prompt_warns_and_crops():
    model = tiny_gpt(seed=27, T=16)
    prompt = prompt_ids(61, 40)
    with pytest.warns(UserWarning, match="longer than the context length"):
        out = generate(model, prompt, 10, temperature=0)
    assert out == generate(model, prompt[-16:], 10, temperature=0)


def test_export_command_writes_safetensors_and_a_hf_directory(tmp_path):
    from safetensors.torch import load_file
    from transformers import GPT2LMHeadModel

    from mygpt2.checkpoint import save_checkpoint
    from mygpt2.cli import main
    from mygpt2.config import Config, ModelConfig
    from mygpt2.model import GPT

    torch.manual_seed(0)
    cfg = Config()
    cfg.model = ModelConfig(n_layers=1, n_heads=2, n_emb=16, T=8, vocab_size=300)
    model = GPT(cfg.model).eval()
    save_checkpoint(
        tmp_path / "checkpoint.pt", {"model": model.state_dict(), "config": cfg.to_dict()}
    )
    assert main(["export", f"--out_dir={tmp_path}", f"--hf={tmp_path / 'hf'}"]) == 0
    weights = load_file(str(tmp_path / "model.safetensors"))
    assert torch.equal(weights["transformer.wte.weight"], model.transformer.wte.weight)
    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    idx = torch.randint(0, 300, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, model(idx)[0], rtol=1e-4, atol=1e-4)
