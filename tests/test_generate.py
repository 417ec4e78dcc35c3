"""Generation (mygpt2.generate): KV-cache decoding against cache-free decoding and Hugging Face
`generate`, the sliding window past T, left-padded batches, top-k / top-p sampling, seeds and
stop tokens, and bad settings.

Models are tiny and random-initialised inside the tests (see models.py): nothing is downloaded.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from models import SHAPES, hf_model, prompt_ids, tiny_gpt

from mygpt2.config import Config
from mygpt2.errors import MyGPT2Error
from mygpt2.generate import (
    KVCache,
    generate,
    generate_stream,
    generation_weights,
    new_cache,
    sample_next,
)
from mygpt2.hf import from_pretrained
from mygpt2.model import Linear
from mygpt2.optim import make_optimizer
from mygpt2.packing import can_pack, pack_weight

# ------------------------------------------------------------ reference and cache


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


def test_batch_of_different_lengths_equals_each_alone():
    model = tiny_gpt(seed=13, T=20)
    prompts = [prompt_ids(61, n, seed=n) for n in (3, 9, 1, 14)]
    # 12 new tokens stay inside T for the short prompts; 30 makes every row slide
    for n_new in (12, 30):
        batched = generate(model, prompts, n_new, temperature=0)
        alone = [generate(model, p, n_new, temperature=0)[0] for p in prompts]
        assert batched == alone


def test_batch_past_T_gives_every_row_its_own_logits():
    # a random model's greedy tokens soon repeat, so compare the distributions themselves: the
    # logits of every step, recorded by a forward hook, while the window slides past T
    model = tiny_gpt(seed=13, T=20)
    prompts = [prompt_ids(61, n, seed=n) for n in (3, 9, 1, 14)]

    def stepwise_logits(batch) -> list[torch.Tensor]:
        seen: list[torch.Tensor] = []
        hook = model.register_forward_hook(lambda m, args, out: seen.append(out[0][:, -1]))
        try:
            generate(model, batch, 30, temperature=0)
        finally:
            hook.remove()
        return seen

    batched = stepwise_logits(prompts)
    assert len(batched) == 31  # the prefill, then one forward after each new token
    for i, p in enumerate(prompts):
        alone = stepwise_logits([p])
        for step, (b, a) in enumerate(zip(batched, alone, strict=True)):
            torch.testing.assert_close(b[i], a[0], atol=1e-5, rtol=0, msg=f"row {i} step {step}")


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


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"),
    [(1.0, None, None), (0.5, None, None), (2.0, None, None), (1.0, 3, None), (0.8, None, 0.7)],
)
def test_sample_next_frequencies_follow_the_distribution(temperature, top_k, top_p):
    # the draws follow softmax(logits / temperature) renormalised over the kept tokens
    logits = torch.tensor([2.0, 1.5, 1.0, 0.0, -1.0, 0.5])
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    order = torch.argsort(probs, descending=True)
    keep = torch.zeros(6, dtype=torch.bool)
    mass = 0.0
    for rank, i in enumerate(order.tolist()):  # top-k, then the nucleus, by hand
        if (top_k is not None and rank >= top_k) or (top_p is not None and mass >= top_p):
            break
        keep[i] = True
        mass += probs[i].item()
    expected = torch.where(keep, probs, 0.0)
    expected /= expected.sum()
    n = 40_000
    g = torch.Generator().manual_seed(0)
    drawn = sample_next(logits.expand(n, -1), temperature, top_k, top_p, generator=g)
    freq = torch.bincount(drawn, minlength=6).double() / n
    assert (freq - expected).abs().max() < 0.012  # about 5 standard errors at n = 40000


def test_top_p_keeps_the_token_that_reaches_the_mass():
    # equal logits: exact probabilities 1/4, cumulative 1/4, 1/2, 3/4, 1
    logits = torch.zeros(4000, 4)
    g = torch.Generator().manual_seed(1)
    for top_p, kept in [(0.25, 1), (0.5, 2), (0.51, 3), (0.75, 3), (1.0, 4)]:
        drawn = sample_next(logits, 1.0, None, top_p, generator=g)
        assert len(set(drawn.tolist())) == kept, top_p


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
        raw = model.hidden(torch.tensor([[1, 2, 3]]))[0, -1] @ model.lm_head.weight.T
        assert raw.argmax() >= 100  # the head's own product favours padding
        assert model(torch.tensor([[1, 2, 3]]))[0].shape[-1] == 100  # the logits leave it out
    prompts = [prompt_ids(100, 3)] * 50
    for out in (
        generate(model, prompts, 5, temperature=0),
        generate(model, prompts, 5, temperature=1.5, seed=0),
        generate(model, prompts, 5, temperature=1.0, top_k=120, top_p=1.0, seed=1),
        generate(model, prompts, 5, temperature=0, use_cache=False),  # the full forward
    ):
        assert max(max(row) for row in out) < 100


# ----------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kw", "words"),
    [
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


def test_tensor_prompts_equal_lists():
    model = tiny_gpt(seed=28)
    prompts = [prompt_ids(61, 5), prompt_ids(61, 5, seed=2)]
    expected = generate(model, prompts, 6, temperature=0)
    assert generate(model, torch.tensor(prompts), 6, temperature=0) == expected
    assert generate(model, torch.tensor(prompts[0]), 6, temperature=0) == expected[:1]
    assert generate(model, prompts[0], 6, temperature=0) == expected[:1]


def test_generate_restores_the_training_mode():
    model = tiny_gpt(seed=29, dropout=0.1)
    for training in (True, False):
        model.train(training)
        generate(model, [1, 2, 3], 2, temperature=0)
        assert model.training is training
        assert all(m.training is training for m in model.modules())


def test_max_new_tokens_zero_gives_nothing():
    model = tiny_gpt()
    assert generate(model, [[1, 2], [3]], 0) == [[], []]
    assert list(generate_stream(model, [1, 2], 0)) == []
    with pytest.raises(MyGPT2Error, match="max_new_tokens"):
        generate(model, [1, 2], -1)


def test_prompt_ids_outside_the_vocabulary_are_refused():
    model = tiny_gpt(vocab_size=100, pad_vocab=True)  # ids 100..127 exist but are not tokens
    for bad in ([5, 100], [-1], [127]):
        with pytest.raises(MyGPT2Error, match=r"outside the vocabulary \(0\.\.99\)"):
            generate(model, bad, 1)
    assert len(generate(model, [0, 99], 1)[0]) == 1


def test_prompts_of_different_lengths_need_the_cache():
    with pytest.raises(MyGPT2Error, match="use_cache=True"):
        generate(tiny_gpt(), [[1, 2], [3]], 2, use_cache=False)


# ------------------------------------------------------------ packed bf16 weights on CPUs


def _cpu_has_native_bf16() -> bool:
    # /proc/cpuinfo itself: the suite sets MYGPT2_CPU_FLAGS empty (conftest.py)
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            text = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in text or "amx_bf16" in text


needs_native_bf16 = pytest.mark.skipif(
    not _cpu_has_native_bf16(),
    reason="oneDNN's packed bf16 matmul needs AVX-512 BF16 or AMX; this CPU has neither",
)


def _steps(model, prompt: torch.Tensor, tokens: list[int], cache: KVCache) -> list[torch.Tensor]:
    """Logits after the prompt and after each of `tokens`, fed one at a time."""
    with torch.no_grad():
        out = [model(prompt, cache=cache)[0][:, -1].float()]
        for t in tokens:
            out.append(model(torch.tensor([[t]]), cache=cache)[0][:, -1].float())
    return out


@needs_native_bf16
def test_packed_bf16_steps_equal_the_plain_bf16_steps(monkeypatch):
    monkeypatch.setenv("MYGPT2_CPU_FLAGS", "avx512f avx512_bf16")
    model = tiny_gpt(seed=3, n_emb=64, vocab_size=300, pad_vocab=True, T=32).bfloat16()
    assert can_pack(model.transformer.wte.weight)
    prompt = torch.tensor([prompt_ids(300, 7)])
    follow = prompt_ids(300, 10, seed=4)
    cache = new_cache(model, torch.zeros(1, dtype=torch.long))
    assert cache.head.is_mkldnn and cache.head.dtype == torch.bfloat16
    linears = [m for m in model.modules() if isinstance(m, Linear)]
    assert set(cache.packed) == set(linears) and all(w.is_mkldnn for w in cache.packed.values())
    packed = _steps(model, prompt, follow, cache)

    plain_cache = KVCache.empty(model.config, 1, torch.device("cpu"), torch.bfloat16)
    plain_cache.head = model.lm_head.weight[:300].t().contiguous()  # as generation on a CPU
    plain = _steps(model, prompt, follow, plain_cache)
    # the same bf16 weights in float32 arithmetic: what both approximate
    exact = model.float()
    with torch.no_grad():
        full = exact(torch.cat([prompt, torch.tensor([follow])], dim=1))[0][0, 6:, :300]
    for i, (a, b) in enumerate(zip(packed, plain, strict=True)):
        assert a.shape == (1, 300), i  # the padded vocabulary rows are not scored
        scale = full[i].abs().max()
        assert (a[0] - full[i]).abs().max() < 0.03 * scale, i
        assert (a - b).abs().max() < 0.03 * scale, i


@needs_native_bf16
def test_packed_weights_live_in_the_cache_never_on_the_model(monkeypatch):
    monkeypatch.setenv("MYGPT2_CPU_FLAGS", "avx512_bf16")
    model = tiny_gpt(seed=5).bfloat16()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stream = generate_stream(model, [1, 2, 3], 10, temperature=0)
    next(stream)
    # mid-generation the model's modules hold nothing new: plain forwards stay plain
    assert not any(t.is_mkldnn for t in model.state_dict().values())
    assert all(not vars(m).get("packed") for m in model.modules())
    stream.close()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert len(generate(model, [[1, 2], [3]], 4, temperature=0)[1]) == 4  # padded rows too


def test_weights_are_packed_only_for_bf16_on_cpus_with_native_bf16(monkeypatch):
    model = tiny_gpt()
    monkeypatch.setenv("MYGPT2_CPU_FLAGS", "avx512_bf16")
    assert not can_pack(model.transformer.wte.weight)  # float32 weights: MKL's path is the fast one
    monkeypatch.setenv("MYGPT2_CPU_FLAGS", "avx2 avx512f")
    assert not can_pack(
        model.bfloat16().transformer.wte.weight
    )  # emulated bf16: oneDNN has no packed kernel
    monkeypatch.setenv("MYGPT2_CPU_FLAGS", "")
    cache = new_cache(model, torch.zeros(1, dtype=torch.long))
    assert not cache.head.is_mkldnn and not cache.packed


# ------------------------------------------------------------ weights laid out once


@needs_native_bf16
def test_generation_weights_made_once_give_the_per_call_tokens(monkeypatch):
    monkeypatch.setenv("MYGPT2_CPU_FLAGS", "avx512f avx512_bf16")
    model = tiny_gpt(seed=6, vocab_size=300, pad_vocab=True, T=32).bfloat16()
    per_call = [generate(model, [1, 2, 3], 12, temperature=0.9, seed=s) for s in (1, 2)]
    weights = generation_weights(model)
    assert weights.head.is_mkldnn and len(weights.packed) == 4 * model.config.n_layers

    packs = []
    monkeypatch.setattr(
        sys.modules["mygpt2.generate"], "pack_weight", lambda w: packs.append(w) or pack_weight(w)
    )
    reused = [
        generate(model, [1, 2, 3], 12, temperature=0.9, seed=s, weights=weights) for s in (1, 2)
    ]
    assert reused == per_call and not packs  # the same tokens, nothing packed again
    generate(model, [1, 2, 3], 2)
    assert len(packs) == len(weights.packed) + 1  # per call without them: every weight again


def test_generation_weights_hold_the_head_transposed_for_float32_cpus():
    model = tiny_gpt(seed=6, vocab_size=300, pad_vocab=True)
    weights = generation_weights(model)
    assert not weights.packed
    assert torch.equal(weights.head, model.lm_head.weight[:300].t())
    assert generate(model, [5, 6], 8, temperature=0, weights=weights) == generate(
        model, [5, 6], 8, temperature=0
    )
    # only the head was copied: the blocks are read live, so changing them leaves the set good
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight.mul_(3.0)
    assert not weights.stale(model)
    assert generate(model, [5, 6], 8, temperature=0, weights=weights) == generate(
        model, [5, 6], 8, temperature=0
    )


@pytest.mark.parametrize(
    "change", ["in place", "training step", "load_state_dict", "to bf16", "another model"]
)
def test_generation_weights_made_before_the_weights_changed_are_refused(change):
    model = tiny_gpt(seed=6)
    weights = generation_weights(model)  # float32 on a CPU: the output head transposed
    if change == "in place":
        with torch.no_grad():
            model.lm_head.weight.add_(0.1)
    elif change == "training step":  # mygpt2's AdamW, fused: its kernel bumps no version
        cfg = Config()
        cfg.model = model.config
        opt = make_optimizer(model, cfg, torch.device("cpu"))
        assert opt.param_groups[0]["fused"]
        x = torch.tensor([prompt_ids(model.config.vocab_size, 8)])
        model(x, x)[1].backward()
        opt.step()
    elif change == "load_state_dict":
        model.load_state_dict(tiny_gpt(seed=7).state_dict())
    elif change == "to bf16":
        model = model.bfloat16()
    else:
        model = tiny_gpt(seed=6)
    with pytest.raises(MyGPT2Error, match=r"made before the model's weights changed"):
        generate(model, [1, 2], 4, weights=weights)
    fresh = generation_weights(model)
    assert not fresh.stale(model) and len(generate(model, [1, 2], 4, weights=fresh)[0]) == 4


def test_greedy_picks_argmaxs_index_with_ties_and_nan():
    """Greedy takes `max`'s index, faster than `argmax` on a CPU: the same index, the first
    of equal maxima, a NaN's where a row has one, in bf16 and float32 logits."""
    gen = torch.Generator().manual_seed(8)
    logits = torch.randint(0, 4, (6, 50257), generator=gen).float()  # many equal maxima
    logits[1, 777] = float("nan")
    logits[2] = float("-inf")
    logits[3, 123] = 9.0
    for dtype in (torch.float32, torch.bfloat16):
        got = sample_next(logits.to(dtype), temperature=0)
        assert torch.equal(got, logits.to(dtype).float().argmax(dim=-1))
    assert got[1] == 777 and got[2] == 0 and got[3] == 123
