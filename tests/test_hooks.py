"""Hook points, the activation cache and edit hooks (mygpt2.hooks), held against TransformerLens.

The reference is TransformerLens 4.x's `TransformerBridge` booted on the same random GPT-2
weights, saved to a local directory with a tiny tokenizer (nothing is downloaded), without
folding or centring weights. The weights are made non-trivial first (LayerNorm gains and
biases far from 1 and 0, large attention and MLP weights) so that a swapped or missing piece
shows. `tl_reference` is shared with test_inspect.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from unittest import mock

import pytest
import torch
from models import hf_model, prompt_ids, tiny_gpt
from torch.nn import functional as F

import mygpt2.model
from mygpt2.errors import MyGPT2Error
from mygpt2.generate import KVCache, generate
from mygpt2.hf import from_pretrained
from mygpt2.hooks import BLOCK_HOOKS, hook_names

SHAPE = (2, 4, 32, 16, 61)  # layers, heads, width, positions, vocabulary
L, H, C, T, V = SHAPE


def nontrivial_hf_gpt2(seed: int = 0):
    """A random HF GPT-2 whose LayerNorms, attention and MLP are far from their init."""
    hf = hf_model(SHAPE, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            noise = 0.3 * torch.randn(p.shape, generator=g)
            if ".ln_" in name or "ln_f" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + noise)
            elif ".attn.c_attn." in name or ".mlp." in name:
                p.mul_(5) if name.endswith("weight") else p.copy_(noise)
            elif name.endswith(("wte.weight", "wpe.weight")):
                p.mul_(5)
    return hf


def boot_bridge(hf, directory: Path):
    """TransformerLens's bridge on `hf`, offline: it wants a tokenizer loaded from a directory
    even when it is fed ids, so a one-character-per-id GPT-2 tokenizer is saved there."""
    transformers = pytest.importorskip("transformers")
    bridge_module = pytest.importorskip("transformer_lens.model_bridge")
    hf.save_pretrained(directory)
    vocab = {chr(0x100 + i): i for i in range(hf.config.vocab_size)}
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    offline = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with mock.patch.dict(os.environ, offline):
        transformers.GPT2TokenizerFast(
            vocab_file=str(directory / "vocab.json"), merges_file=str(directory / "merges.txt")
        ).save_pretrained(directory)
        tok = transformers.AutoTokenizer.from_pretrained(directory)
        return bridge_module.TransformerBridge.boot_transformers(
            str(directory), hf_model=hf, tokenizer=tok, device="cpu"
        )


@pytest.fixture(scope="module")
def tl_reference(tmp_path_factory):
    """(TransformerLens bridge, our GPT) on the same non-trivial weights, and a batch of ids."""
    pytest.importorskip("transformer_lens")
    directory = tmp_path_factory.mktemp("tl-gpt2")
    hf = nontrivial_hf_gpt2()
    bridge = boot_bridge(hf, directory)
    ours = from_pretrained(str(directory)).eval()
    idx = torch.randint(0, V, (3, T), generator=torch.Generator().manual_seed(1))
    return bridge, ours, idx


def lively(model):
    """Scale a tiny model's weights up from GPT-2's init, so that its choices depend on them."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(8)
    return model


def tl_name(name: str) -> str:
    return "unembed.hook_out" if name == "hook_logits" else name


# ------------------------------------------------------------------- against TransformerLens


def test_every_hook_point_equals_transformer_lens(tl_reference):
    bridge, ours, idx = tl_reference
    with torch.no_grad():
        tl_logits, tl_cache = bridge.run_with_cache(idx)
    logits, cache = ours.run_with_cache(idx)
    torch.testing.assert_close(logits, tl_logits, atol=1e-5, rtol=0)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    assert len(cache) == len(ours.hook_names()) == 2 + 17 * L + 4
    for name in ours.hook_names():
        got, expected = cache[name], tl_cache[tl_name(name)]
        assert got.shape == expected.shape, name
        if name.endswith("hook_attn_scores"):  # TL fills masked scores with the lowest float
            assert torch.all(got[..., ~causal] == float("-inf")), name
            got, expected = got[..., causal], expected[..., causal]
        assert expected.abs().max() > 1e-2, f"{name}: too small to tell anything"
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0, msg=name)


def test_gradients_at_resid_post_equal_transformer_lens(tl_reference):
    bridge, ours, idx = tl_reference
    names = [f"blocks.{i}.hook_resid_post" for i in range(L)] + ["blocks.0.attn.hook_z"]
    names += ["blocks.1.attn.hook_pattern", "blocks.1.ln2.hook_scale"]  # the written-out paths
    tl_cache, fwd, bwd = bridge.get_caching_hooks(lambda n: n in names, incl_bwd=True)
    with bridge.hooks(fwd_hooks=fwd, bwd_hooks=bwd):
        out = bridge(idx)
        F.cross_entropy(out[:, :-1].reshape(-1, V), idx[:, 1:].reshape(-1)).backward()
    bridge.zero_grad(set_to_none=True)

    logits, cache = ours.run_with_cache(idx, names=names, grad=True)
    F.cross_entropy(logits[:, :-1].reshape(-1, V), idx[:, 1:].reshape(-1)).backward()
    ours.zero_grad(set_to_none=True)
    for name in names:
        expected = tl_cache[name + "_grad"]
        assert expected.abs().max() > 1e-4
        torch.testing.assert_close(cache.grad(name), expected, rtol=1e-4, atol=1e-8, msg=name)
    moved = cache.to("cpu")  # gradients travel with the cache
    torch.testing.assert_close(moved.grad(names[0]), cache.grad(names[0]))


# ------------------------------------------------------------------------------ names, cache


def test_hook_names_in_forward_order():
    names = hook_names(2)
    assert names[:3] == ["hook_embed", "hook_pos_embed", "blocks.0.hook_resid_pre"]
    assert names[-4:] == [
        "ln_final.hook_scale",
        "ln_final.hook_normalized",
        "ln_final.hook_out",
        "hook_logits",
    ]
    assert names[2 : 2 + len(BLOCK_HOOKS)] == [f"blocks.0.{s}" for s in BLOCK_HOOKS]
    assert tiny_gpt().hook_names() == names

    seen = []
    model = tiny_gpt()
    model.run_with_hooks(prompt_ids(61, 5), [("*", lambda x, name: seen.append(name))])
    assert seen == names  # every point fires once, in this order


def test_names_as_list_glob_predicate_and_stack():
    model = tiny_gpt()
    idx = torch.tensor([prompt_ids(61, 9), prompt_ids(61, 9, seed=2)])
    _, everything = model.run_with_cache(idx)
    _, by_glob = model.run_with_cache(idx, names="blocks.*.hook_resid_post")
    _, by_list = model.run_with_cache(idx, names=["hook_embed", "blocks.1.attn.hook_*"])
    _, by_test = model.run_with_cache(idx, names=lambda n: n.endswith("hook_scale"))
    assert list(by_glob) == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    assert len(by_list) == 1 + 6 and "blocks.1.attn.hook_pattern" in by_list
    assert list(by_test) == ["blocks.0.ln1.hook_scale", "blocks.0.ln2.hook_scale",
                             "blocks.1.ln1.hook_scale", "blocks.1.ln2.hook_scale",
                             "ln_final.hook_scale"]  # fmt: skip
    for cache in (by_glob, by_list, by_test):
        for name, value in cache.items():
            torch.testing.assert_close(value, everything[name], atol=1e-6, rtol=0)
    stacked = everything.stack("hook_resid_post")
    assert stacked.shape == (2, 2, 9, 32)
    assert torch.equal(stacked[1], everything["blocks.1.hook_resid_post"])
    assert everything.stack("attn.hook_pattern").shape == (2, 2, 2, 9, 9)
    moved = everything.to("cpu")
    assert torch.equal(moved["hook_logits"], everything["hook_logits"])
    assert not everything["hook_embed"].requires_grad  # no graph kept without grad=True
    assert "hook_embed" in by_list and "nope" not in by_list and by_list.get("nope") is None


def test_the_last_resid_post_gives_the_logits_and_ln_final_is_before_the_affine():
    model = tiny_gpt(seed=3)
    with torch.no_grad():
        model.transformer.ln_f.weight.normal_(1.0, 0.5)
        model.transformer.ln_f.bias.normal_(0.0, 0.5)
    logits, cache = model.run_with_cache(prompt_ids(61, 7))
    ln = model.transformer.ln_f
    torch.testing.assert_close(ln(cache["blocks.1.hook_resid_post"]), cache["ln_final.hook_out"])
    normalized = cache["ln_final.hook_normalized"]
    torch.testing.assert_close(normalized * ln.weight + ln.bias, cache["ln_final.hook_out"])
    torch.testing.assert_close(cache["hook_logits"], logits)


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_looking_at_hooks_leaves_the_bf16_forward_bit_for_bit(norm):
    """A hook that only looks at a norm's hook_scale or hook_normalized, or at the attention
    scores or pattern (run_with_cache, observers), gets the written-out values, but the forward
    keeps the fused kernels' output: in bf16 the written-out steps round differently, and
    logits moved by up to 0.016. Steering with alpha 0 adds no hook at all, so generation is
    the plain one token for token."""
    from mygpt2.generate import generate
    from mygpt2.sae import SAE, SAEConfig

    model = tiny_gpt(seed=5, norm=norm, n_emb=64).bfloat16()
    with torch.no_grad():
        for p in model.parameters():  # gains and biases away from 1 and 0
            p.add_(torch.randn_like(p) * 0.2)
    idx = torch.tensor([prompt_ids(61, 20)])
    names = ["blocks.0.ln1.hook_normalized", "blocks.1.ln2.hook_scale", "ln_final.hook_normalized"]
    seen = []
    with torch.no_grad():
        plain = model(idx)[0]
        with model.hooks(fwd_hooks=[(n, lambda x, name: seen.append(name)) for n in names]):
            looked = model(idx)[0]
        cached, cache = model.run_with_cache(idx)  # every hook point, scores and patterns too
    assert torch.equal(looked, plain) and torch.equal(cached, plain)
    assert seen == names and cache["ln_final.hook_normalized"].dtype == torch.bfloat16
    sae = SAE(SAEConfig(d_in=64, d_sae=8, k=2, hook_name="blocks.0.ln1.hook_normalized"))
    prompt = prompt_ids(61, 5)
    want = generate(model, prompt, 12, temperature=1.0, seed=3)
    assert generate(model, prompt, 12, temperature=1.0, seed=3, steer=[(sae, 0, 0.0)]) == want


# -------------------------------------------------------------------- free when unused


def test_without_hooks_the_forward_takes_the_plain_path(monkeypatch):
    """No hook: SDPA, F.layer_norm and the fused loss, exactly as without this feature; hooks
    that do not watch scores or patterns keep SDPA too."""
    model = tiny_gpt().train()
    idx = torch.tensor([prompt_ids(61, 12)])
    model.eval()
    plain, _ = model(idx)

    def refuse(*args, **kwargs):
        raise AssertionError("the written-out attention ran")

    monkeypatch.setattr(mygpt2.model, "attention_written_out", refuse)
    logits, _ = model(idx)
    assert torch.equal(logits, plain)
    with model.hooks([("blocks.*.hook_resid_post", lambda x, name: None)]):
        assert torch.equal(model(idx)[0], plain)
    assert model.active_hooks is None
    model.train()
    _, loss = model(idx, targets=idx, return_logits=False)  # the fused loss: no logits
    assert loss is not None and _ is None
    with model.hooks([("blocks.0.hook_mlp_out", lambda x, name: None)]):
        none, hooked_loss = model(idx, targets=idx, return_logits=False)
    assert none is None and torch.equal(hooked_loss, loss)


@pytest.mark.parametrize("case", ["causal", "cached chunk", "left-padded"])
def test_written_out_attention_equals_sdpa(case):
    """The explicit softmax path (taken when a hook watches the pattern) against SDPA."""
    torch.manual_seed(0)
    model = tiny_gpt(seed=4, n_heads=4)
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_attn.weight.mul_(10)  # peaked patterns
    a, b = prompt_ids(61, 14), prompt_ids(61, 9, seed=5)

    def run(hooked: bool):
        z = {}
        fwd = [("blocks.*.attn.hook_z", lambda x, name: z.setdefault(name, []).append(x))]
        if hooked:
            fwd.append(("blocks.*.attn.hook_pattern", lambda x, name: None))
        with model.hooks(fwd), torch.no_grad():
            if case == "causal":
                out = model(torch.tensor([a]))[0]
            elif case == "cached chunk":
                cache = KVCache.empty(model.config, 1, torch.device("cpu"), torch.float32)
                model(torch.tensor([a[:6]]), cache=cache)
                out = model(torch.tensor([a[6:]]), cache=cache)[0]
            else:
                cache = KVCache.empty(model.config, 2, torch.device("cpu"), torch.float32)
                cache.pad = torch.tensor([0, 5])
                out = model(torch.tensor([a, [0] * 5 + b]), cache=cache)[0]
        return out, z

    sdpa_logits, sdpa_z = run(False)
    explicit_logits, explicit_z = run(True)
    for name in sdpa_z:
        torch.testing.assert_close(explicit_z[name], sdpa_z[name], atol=1e-6, rtol=0)
    torch.testing.assert_close(explicit_logits, sdpa_logits, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------ edit hooks


def test_hooks_observe_replace_and_compose_in_order():
    model = tiny_gpt(seed=2)
    idx = prompt_ids(61, 8)
    plain = model.run_with_hooks(idx)
    assert torch.equal(model.run_with_hooks(idx, [("hook_embed", lambda x, name: None)]), plain)

    target = torch.randn(32)
    replaced = model.run_with_hooks(
        idx, [("blocks.1.hook_resid_post", lambda x, name: torch.zeros_like(x) + target)]
    )
    with torch.no_grad():
        expected = model.lm_head(model.transformer.ln_f(target))
    torch.testing.assert_close(replaced[0], expected.expand(8, -1))

    order = []
    first = ("blocks.0.hook_resid_mid", lambda x, name: order.append(1) or x * 2)
    second = ("blocks.0.hook_resid_mid", lambda x, name: order.append(2) or x + 1)
    doubled_then_plus_one = model.run_with_hooks(idx, [first, second])
    assert order == [1, 2]
    manual = model.run_with_hooks(idx, [("blocks.0.hook_resid_mid", lambda x, name: x * 2 + 1)])
    torch.testing.assert_close(doubled_then_plus_one, manual)


def test_hooks_context_is_removed_on_exit_on_exceptions_and_nests():
    model = tiny_gpt()
    idx = prompt_ids(61, 6)
    plain = model.run_with_hooks(idx)
    calls = []
    with model.hooks(fwd_hooks=[("hook_embed", lambda x, name: calls.append("outer"))]):
        with model.hooks([("hook_embed", lambda x, name: calls.append("inner"))]):
            model(torch.tensor([idx]))
        model(torch.tensor([idx]))
    assert calls == ["outer", "inner", "outer"]
    assert model.active_hooks is None

    def broken(x, name):
        raise RuntimeError("my hook broke")

    with pytest.raises(RuntimeError, match="my hook broke"):
        model.run_with_hooks(idx, [("blocks.1.mlp.hook_post", broken)])
    assert model.active_hooks is None
    with pytest.raises(ValueError, match="body broke"), model.hooks([("hook_embed", broken)]):
        raise ValueError("body broke")
    assert model.active_hooks is None
    assert torch.equal(model.run_with_hooks(idx), plain)


def test_gradients_through_the_cache_by_hand():
    model = tiny_gpt(seed=6)
    idx = torch.tensor([prompt_ids(61, 10)])
    logits, cache = model.run_with_cache(idx, names="blocks.*.hook_resid_post", grad=True)
    logits[0, -1, 3].backward()
    # the logit depends on resid_post of the last layer only through ln_f and the head
    resid = cache["blocks.1.hook_resid_post"][0, -1].clone().requires_grad_(True)
    model.lm_head(model.transformer.ln_f(resid))[3].backward()
    torch.testing.assert_close(cache.grad("blocks.1.hook_resid_post")[0, -1], resid.grad)
    assert cache.grad("blocks.1.hook_resid_post")[0, :-1].abs().max() == 0  # causal


# ----------------------------------------------------------------------- during generation


def test_greedy_generation_under_an_ablation_equals_the_ablated_full_forward():
    """Hooks run at every KV-cache step with that step's activations: zero-ablating head 1 of
    layer 0 while generating equals recomputing the whole ablated forward for every token."""
    model = lively(tiny_gpt(seed=7, n_heads=4, T=40))
    prompt = prompt_ids(61, 6)
    steps = []

    def ablate(z, name, pos):
        steps.append(pos)
        z = z.clone()
        z[:, :, 1] = 0
        return z

    with model.hooks([("blocks.0.attn.hook_z", ablate)]):
        got = generate(model, prompt, 12, temperature=0)[0]
    assert model.active_hooks is None
    assert steps[0] == range(0, 6) and steps[1:] == [range(n, n + 1) for n in range(6, 18)]

    tokens = list(prompt)
    for _ in range(12):
        logits = model.run_with_hooks(tokens, [("blocks.0.attn.hook_z", ablate)])
        tokens.append(int(logits[0, -1].argmax()))
    assert got == tokens[6:]
    assert got != generate(model, prompt, 12, temperature=0)[0]  # the ablation matters


def test_observing_hooks_do_not_change_padded_batched_generation():
    """Watching the patterns takes the written-out attention with the KV cache's padding masks."""
    model = tiny_gpt(seed=8)
    prompts = [prompt_ids(61, 9), prompt_ids(61, 4, seed=3)]
    plain = generate(model, prompts, 10, temperature=0)
    shapes = []
    with model.hooks([("blocks.*.attn.hook_pattern", lambda x, name: shapes.append(x.shape))]):
        watched = generate(model, prompts, 10, temperature=0)
    assert watched == plain
    assert shapes[0] == (2, 2, 9, 9) and shapes[2] == (2, 2, 1, 10)


# ---------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("names", "words"),
    [
        ("blocks.0.hook_resid", r"unknown hook name 'blocks.0.hook_resid'.*Close names: "
                                r"blocks.0.hook_resid_pre.*hook_names\(\)"),
        ("blocks.0.attn.hook_result", r"Close names: .*hook_names\(\)"),
        ("blocks.7.hook_resid_post", r"the model has 2 layers, blocks.0 to blocks.1"),
        ("blocks.*.hook_nothing", r"'blocks.\*.hook_nothing' matches no hook name"),
        (lambda n: False, "accepts no hook name"),
        (42, "a name, a glob, a list of those, or a predicate"),
    ],
)  # fmt: skip
def test_bad_names_are_clear_errors(names, words):
    model = tiny_gpt()
    with pytest.raises(MyGPT2Error, match=words):
        model.run_with_cache(prompt_ids(61, 4), names=names)
    with pytest.raises(MyGPT2Error, match=words), model.hooks([(names, lambda x, name: None)]):
        pass
    assert model.active_hooks is None


@pytest.mark.parametrize(
    ("result", "words"),
    [
        (lambda x: x[:, :-1], r"hook .* on 'blocks.0.hook_attn_out' returned a \(1, 3, 32\) "
                              r"float32 on cpu tensor; expected \(1, 4, 32\) float32"),
        (lambda x: x.double(), r"returned a \(1, 4, 32\) float64 .*expected \(1, 4, 32\) float32"),
        (lambda x: 3.0, r"returned float: return None to observe, or a tensor of shape \(1, 4, 32\)"),
    ],
)  # fmt: skip
def test_a_hook_returning_the_wrong_thing_is_named(result, words):
    model = tiny_gpt()
    with pytest.raises(MyGPT2Error, match=words):
        model.run_with_hooks(
            prompt_ids(61, 4), [("blocks.0.hook_attn_out", lambda x, n: result(x))]
        )
    assert model.active_hooks is None


def test_other_bad_input():
    model = tiny_gpt()  # T = 24
    with pytest.raises(
        MyGPT2Error, match=r"30 tokens are more than the model's context length T=24"
    ):
        model.run_with_cache(prompt_ids(61, 30))
    with pytest.raises(MyGPT2Error, match=r"token id 61 is outside the vocabulary \(0..60\)"):
        model.run_with_hooks([1, 61])
    with pytest.raises(MyGPT2Error, match="pairs"):
        model.run_with_hooks([1, 2], fwd_hooks=["hook_embed"])
    _, cache = model.run_with_cache([1, 2, 3], names="blocks.*.hook_resid_post")
    with pytest.raises(MyGPT2Error, match=r"no 'blocks.0.hook_resid_pre'.*Close names"):
        cache["blocks.0.hook_resid_pre"]
    with pytest.raises(KeyError):  # also a KeyError, as for a dict
        cache["blocks.0.hook_resid_pre"]
    with pytest.raises(MyGPT2Error, match="keeps no gradients"):
        cache.grad("blocks.0.hook_resid_post")
    with pytest.raises(MyGPT2Error, match="no block hook"):
        cache.stack("hook_logits")
    _, cache = model.run_with_cache([1, 2, 3], names="hook_embed", grad=True)
    with pytest.raises(MyGPT2Error, match="no gradient at 'hook_embed' yet"):
        cache.grad("hook_embed")


# ------------------------------------------------------------- defaults and boundaries (#22)


def test_pos_reaches_keyword_only_and_callable_object_hooks():
    """`pos` is given to any hook with a parameter of that name: positional, keyword-only, or
    a callable object's `__call__` (found through its signature)."""
    model = tiny_gpt()
    seen = {}

    def keyword_only(x, name, *, pos):
        seen["keyword_only"] = pos

    class Watcher:
        def __call__(self, x, name, pos):
            seen["object"] = pos

    model.run_with_hooks(
        prompt_ids(61, 5), [("hook_embed", keyword_only), ("hook_embed", Watcher())]
    )
    assert seen == {"keyword_only": range(0, 5), "object": range(0, 5)}


def test_hook_names_of_the_variants_by_hand():
    """Rotary and qk_norm points come after hook_v, qk_norm's first (the rotation is applied to
    normalised queries and keys); swiglu's ungated half after hook_pre; no hook_pos_embed
    without learned position embeddings."""
    block = [
        "hook_resid_pre", "ln1.hook_scale", "ln1.hook_normalized",
        "attn.hook_q", "attn.hook_k", "attn.hook_v",
        "attn.q_norm.hook_out", "attn.k_norm.hook_out", "attn.hook_rot_q", "attn.hook_rot_k",
        "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z", "hook_attn_out",
        "hook_resid_mid", "ln2.hook_scale", "ln2.hook_normalized",
        "mlp.hook_pre", "mlp.hook_pre_linear", "mlp.hook_post", "hook_mlp_out", "hook_resid_post",
    ]  # fmt: skip
    final = ["ln_final.hook_scale", "ln_final.hook_normalized", "ln_final.hook_out", "hook_logits"]
    got = hook_names(1, pos_emb="rope", mlp="swiglu", qk_norm=True)
    assert got == ["hook_embed", *[f"blocks.0.{s}" for s in block], *final]
    for pos_emb in ("rope", "none"):
        assert hook_names(1, pos_emb=pos_emb)[:2] == ["hook_embed", "blocks.0.hook_resid_pre"]
    assert hook_names(1)[:2] == ["hook_embed", "hook_pos_embed"]
    assert len(hook_names(3)) == 2 + 3 * 17 + 4


def test_context_length_vocabulary_and_layer_boundaries():
    model = tiny_gpt()  # T = 24, vocabulary 61, 2 layers
    logits, cache = model.run_with_cache(prompt_ids(61, 24), names="hook_embed")
    assert logits.shape == (1, 24, 61) and cache["hook_embed"].shape == (1, 24, 32)
    with pytest.raises(MyGPT2Error, match=r"25 tokens are more than .* T=24"):
        model.run_with_hooks(prompt_ids(61, 25))
    assert model.run_with_hooks([0, 60]).shape == (1, 2, 61)  # the first and last ids
    with pytest.raises(MyGPT2Error, match=r"token id -1 is outside"):
        model.run_with_hooks([0, -1])
    # one past the last layer names the layers, as a far one does
    with pytest.raises(MyGPT2Error, match=r"the model has 2 layers, blocks.0 to blocks.1"):
        model.run_with_cache([1, 2], names="blocks.2.hook_resid_post")
    assert list(model.run_with_cache([1, 2], names="blocks.1.hook_resid_post")[1]) == [
        "blocks.1.hook_resid_post"
    ]
