"""Architecture knobs (norm, pos_emb, mlp, qk_norm, tie_embeddings, logit_softcap).

Each variant against hand computation: RMSNorm's formula, the rotary rotation written with complex
numbers (and its relative-position property), ReLU squared and SwiGLU from the module's weights,
the softcap's formula; gradients against finite differences (float64 gradcheck); generation
with the KV cache against the full forward; the hook points. The default config's parity with
Hugging Face GPT-2 is tests/test_model.py's and tests/test_hf.py's; the Llama variant's export
is held against transformers' LlamaForCausalLM here.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import pytest
import torch
from models import hf_model, prompt_ids, tiny_gpt

from mygpt2.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from mygpt2.config import Config, ModelConfig, validate
from mygpt2.errors import MyGPT2Error
from mygpt2.generate import KVCache, generate
from mygpt2.hf import save_pretrained, save_safetensors
from mygpt2.model import GPT, rotary, rotate

# every knob value away from GPT-2's, one at a time, then all of them together
VARIANTS = {
    "gpt2": {},
    "rmsnorm": {"norm": "rmsnorm"},
    "rope": {"pos_emb": "rope"},
    "no_pos": {"pos_emb": "none"},
    "relu2": {"mlp": "relu2"},
    "swiglu": {"mlp": "swiglu"},
    "qk_norm": {"qk_norm": True},
    "untied": {"tie_embeddings": False},
    "softcap": {"logit_softcap": 2.0},
    "all": dict(
        norm="rmsnorm",
        pos_emb="rope",
        mlp="swiglu",
        qk_norm=True,
        tie_embeddings=False,
        logit_softcap=5.0,
    ),
}
LLAMA = dict(norm="rmsnorm", pos_emb="rope", mlp="swiglu")
V = 61  # tiny_gpt's vocabulary


def perturb_gains(model: GPT, seed: int = 3) -> GPT:
    """Move every norm gain and bias away from 1 and 0, so a formula that ignores them shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.5 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def variant(name: str, seed: int = 0, **overrides) -> GPT:
    return perturb_gains(tiny_gpt(seed, **{**VARIANTS[name], **overrides}))


# ----------------------------------------------------------------------------- every variant


@pytest.mark.parametrize("name", VARIANTS)
def test_shapes_and_both_loss_paths(name):
    model = variant(name)
    idx = torch.randint(0, V, (3, 24))
    targets = torch.randint(0, V, (3, 24))
    logits, loss = model(idx, targets)
    assert logits.shape == (3, 24, V) and loss.shape == ()
    # the training path (fused loss, or the plain one under a softcap) gives the same loss
    _, train_loss = model(idx, targets, return_logits=False)
    torch.testing.assert_close(train_loss, loss, atol=1e-5, rtol=0)
    cfg = model.config
    assert (model.transformer.wpe is None) == (cfg.pos_emb != "learned")
    assert (model.lm_head.weight is model.transformer.wte.weight) == cfg.tie_embeddings
    norms = {type(m).__name__ for n, m in model.named_modules() if "ln_" in n}
    assert norms == ({"RMSNorm"} if cfg.norm == "rmsnorm" else {"LayerNorm"})
    assert (model.transformer.h[0].attn.q_norm is not None) == cfg.qk_norm


def test_bfloat16_autocast_and_weights_run_every_knob_without_warnings():
    model = variant("all")
    idx, targets = torch.randint(0, V, (2, 24)), torch.randint(0, V, (2, 24))
    _, expected = model(idx, targets)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # say a norm's gain and input in different dtypes
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, loss = model(idx, targets, return_logits=False)
        loss.backward()
        model.to(torch.bfloat16)  # how sampling runs in bfloat16
        generated = generate(model, idx[0, :5].tolist(), 3, temperature=0)
    assert abs(loss.item() - expected.item()) < 0.05 and len(generated[0]) == 3


@pytest.mark.parametrize("name", VARIANTS)
def test_gradients_match_finite_differences(name):
    torch.manual_seed(0)
    cfg = ModelConfig(n_layers=1, n_heads=2, n_emb=8, T=5, vocab_size=7, **VARIANTS[name])
    model = perturb_gains(GPT(cfg).double())
    params = dict(model.named_parameters())  # the tied head appears once, as wte
    names = list(params)
    idx = torch.tensor([[1, 4, 0, 6, 2]])

    def logits_of(*values):
        out, _ = torch.func.functional_call(model, dict(zip(names, values, strict=True)), (idx,))
        return out

    inputs = tuple(p.detach().clone().requires_grad_() for p in params.values())
    assert torch.autograd.gradcheck(logits_of, inputs, eps=1e-6, atol=1e-6, fast_mode=True)


@pytest.mark.parametrize("name", VARIANTS)
def test_kv_cache_equals_the_full_forward(name):
    model = variant(name)
    prompt = prompt_ids(V, 9)
    # greedy tokens, past T: the window slides and the cache is rebuilt
    cached = generate(model, prompt, 30, temperature=0)
    assert cached == generate(model, prompt, 30, temperature=0, use_cache=False)
    # the last position's logits, step by step through the cache
    ids = torch.tensor([prompt + cached[0][:10]])
    with torch.no_grad():
        full, _ = model(ids)
        cache = KVCache.empty(model.config, 1, ids.device, torch.float32)
        model(ids[:, :9], cache=cache)
        for j in range(9, ids.shape[1]):
            step, _ = model(ids[:, j : j + 1], cache=cache)
            torch.testing.assert_close(step[:, -1], full[:, j], atol=1e-5, rtol=0)
    # a left-padded row gives what the row alone gives (positions count from its first token)
    short, long = prompt_ids(V, 4, seed=2), prompt_ids(V, 11, seed=3)
    batch = generate(model, [short, long], 8, temperature=0)
    assert batch == [generate(model, r, 8, temperature=0)[0] for r in (short, long)]
    rows = [short + batch[0][:3], long + batch[1][:3]]
    with torch.no_grad():
        cache = KVCache.empty(model.config, 2, ids.device, torch.float32)
        cache.pad = torch.tensor([7, 0])
        model(torch.tensor([[0] * 7 + short, long]), cache=cache)
        for j in range(3):
            step, _ = model(torch.tensor([[rows[0][4 + j]], [rows[1][11 + j]]]), cache=cache)
            for b, row in enumerate(rows):
                alone, _ = model(torch.tensor([row[: len(row) - 2 + j]]))
                torch.testing.assert_close(step[b, -1], alone[0, -1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", VARIANTS)
def test_every_hook_name_fires_once_and_hooks_change_nothing(name):
    model = variant(name)
    idx = torch.randint(0, V, (2, 10))
    with torch.no_grad():
        plain, _ = model(idx)
    seen = []
    with model.hooks([("*", lambda x, n: seen.append(n))]), torch.no_grad():
        hooked, _ = model(idx)  # every point watched: written-out norms and attention
    assert seen == model.hook_names()
    torch.testing.assert_close(hooked, plain, atol=1e-5, rtol=0)
    cfg = model.config
    assert ("hook_pos_embed" in seen) == (cfg.pos_emb == "learned")
    assert ("blocks.0.attn.hook_rot_q" in seen) == (cfg.pos_emb == "rope")
    assert ("blocks.0.mlp.hook_pre_linear" in seen) == (cfg.mlp == "swiglu")


def test_a_hook_name_the_variant_lacks_is_refused():
    with pytest.raises(MyGPT2Error, match="unknown hook name 'hook_pos_embed'"):
        variant("rope").run_with_cache(list(range(5)), names="hook_pos_embed")


@pytest.mark.parametrize("name", ["gpt2", "rmsnorm", "rope", "no_pos", "swiglu", "untied"])
def test_direct_logit_attribution_sums_to_the_logit(name):
    from mygpt2.inspect import direct_logit_attribution

    model = variant(name)
    idx = torch.randint(0, V, (2, 10))
    dla = direct_logit_attribution(model, idx, [5, 9], pos=-2)
    with torch.no_grad():
        expected = model(idx)[0][torch.arange(2), -2, torch.tensor([5, 9])]
    torch.testing.assert_close(dla.values.sum(0), expected, atol=1e-5, rtol=0)
    assert ("pos_embed" in dla.labels) == (name not in ("rope", "no_pos"))
    with pytest.raises(MyGPT2Error, match="logit_softcap bends its logits"):
        direct_logit_attribution(variant("softcap"), idx, 5)


# ----------------------------------------------------------------------------- hand computations


def test_rmsnorm_against_its_formula_and_its_hooks():
    model = variant("rmsnorm")
    _, cache = model.run_with_cache(torch.randint(0, V, (2, 10)))
    x = cache["blocks.1.hook_resid_pre"]
    scale = (x.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt()  # no centring, no bias
    torch.testing.assert_close(cache["blocks.1.ln1.hook_scale"], scale)
    torch.testing.assert_close(cache["blocks.1.ln1.hook_normalized"], x / scale)
    ln = model.transformer.h[1].ln_1
    torch.testing.assert_close(ln(x), x / scale * ln.weight, atol=1e-6, rtol=1e-5)


def test_rotation_against_complex_numbers_and_relative_positions():
    hs, nh = 8, 3
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, nh, hs, generator=g, dtype=torch.float64)
    pos = torch.tensor([0, 1, 2, 5, 9, 30])
    got = rotate(x, *(c.double() for c in rotary(pos, hs)))
    # pair i is the complex number x[i] + j x[i + hs/2], turned by pos * 10000^(-2i/hs)
    theta = 10000.0 ** (-torch.arange(hs // 2, dtype=torch.float64) * 2 / hs)
    z = torch.complex(x[..., : hs // 2], x[..., hs // 2 :])
    turned = z * torch.polar(torch.ones((), dtype=torch.float64), pos[:, None, None] * theta)
    torch.testing.assert_close(got, torch.cat([turned.real, turned.imag], -1))
    # q . k depends only on the offset between their positions
    q, k = x[0, 0, 0], x[1, 0, 0]

    def score(m: int, n: int) -> torch.Tensor:
        cq, sq = rotary(torch.tensor([m]), hs)
        ck, sk = rotary(torch.tensor([n]), hs)
        qm = rotate(q[None, None], cq.double(), sq.double())
        kn = rotate(k[None, None], ck.double(), sk.double())
        return (qm * kn).sum()

    for m, n, shift in [(3, 1, 5), (7, 7, 11), (2, 9, 40)]:
        torch.testing.assert_close(score(m, n), score(m + shift, n + shift))
    assert not torch.isclose(score(3, 1), score(3, 2))


def test_rope_hooks_hold_the_rotated_queries_and_keys():
    model = variant("rope")
    _, cache = model.run_with_cache(torch.randint(0, V, (1, 12)))
    cos, sin = rotary(torch.arange(12), 16)
    for h in ("q", "k"):
        before, after = cache[f"blocks.0.attn.hook_{h}"], cache[f"blocks.0.attn.hook_rot_{h}"]
        torch.testing.assert_close(after, rotate(before, cos, sin))
        assert not torch.allclose(after[:, 1:], before[:, 1:])  # position 0 does not turn


@pytest.mark.parametrize("name", ["relu2", "swiglu"])
def test_mlp_against_its_weights(name):
    model = variant(name)
    mlp = model.transformer.h[0].mlp
    x = torch.randn(2, 5, 32)
    pre = x @ mlp.c_fc.weight + mlp.c_fc.bias
    if name == "relu2":
        hidden = torch.clamp(pre, min=0) ** 2
    else:
        gate, up = pre.chunk(2, dim=-1)
        hidden = gate * torch.sigmoid(gate) * up
    torch.testing.assert_close(mlp(x), hidden @ mlp.c_proj.weight + mlp.c_proj.bias)
    width = {"relu2": 4 * 32, "swiglu": 128}[name]  # 8/3 * 32 rounded up to a multiple of 64
    assert mlp.c_proj.weight.shape == (width, 32)


def test_softcap_bounds_the_logits_by_its_formula():
    capped = variant("softcap")
    plain = tiny_gpt(**{**VARIANTS["softcap"], "logit_softcap": 0.0})
    plain.load_state_dict(capped.state_dict())
    with torch.no_grad():
        plain.lm_head.weight.mul_(50)  # raw logits far beyond the cap
    capped.load_state_dict(plain.state_dict())
    idx = torch.randint(0, V, (2, 12))
    with torch.no_grad():
        raw, _ = plain(idx)
        logits, _ = capped(idx)
        cached = generate(capped, idx[0].tolist(), 1, temperature=0)
    assert raw.abs().max() > 10 and logits.abs().max() <= 2.0
    torch.testing.assert_close(logits, 2.0 * torch.tanh(raw / 2.0))
    assert cached[0][0] == logits[0, -1].argmax().item()


def test_untied_head_is_a_weight_of_its_own():
    tied, untied = tiny_gpt(), tiny_gpt(tie_embeddings=False)
    head = untied.lm_head.weight
    assert head.data_ptr() != untied.transformer.wte.weight.data_ptr()
    assert untied.num_params() == tied.num_params() + head.numel()
    assert untied.num_params(non_embedding=True) == tied.num_params(True) + head.numel()
    # the same matmuls: only the embedding lookup is no longer also the head
    assert untied.flops_per_token() == tied.flops_per_token()
    _, loss = untied(torch.randint(0, V, (2, 8)), torch.randint(0, V, (2, 8)))
    loss.backward()
    assert head.grad is not None and untied.transformer.wte.weight.grad is not None
    assert not torch.equal(head.grad, untied.transformer.wte.weight.grad)


def test_sizes_and_cropping_without_position_embeddings():
    learned, rope = tiny_gpt(), tiny_gpt(pos_emb="rope")
    assert rope.num_params() == learned.num_params() - 24 * 32  # no wpe (T=24, n_emb=32)
    assert rope.num_params(non_embedding=True) == learned.num_params(non_embedding=True)
    assert rope.flops_per_token() == learned.flops_per_token()
    swiglu = tiny_gpt(mlp="swiglu")  # per block: (32 -> 2 x 128) + (128 -> 32), with biases
    mlp_params = (32 * 256 + 256 + 128 * 32 + 32) - (32 * 128 + 128 + 128 * 32 + 32)
    assert swiglu.num_params() == learned.num_params() + 2 * mlp_params
    before = generate(rope, [1, 2, 3], 4, temperature=0)
    rope.crop_context(8)
    assert rope.config.T == 8 and generate(rope, [1, 2, 3], 4, temperature=0) == before


# ----------------------------------------------------------------------------- config and files


def test_unknown_values_and_impossible_settings_are_clear_errors():
    for key, value, valid in [
        ("norm", "batchnorm", "layernorm, rmsnorm"),
        ("pos_emb", "alibi", "learned, rope, none"),
        ("mlp", "geglu", "gelu, relu2, swiglu"),
    ]:
        with pytest.raises(MyGPT2Error, match=f"{key} must be one of {valid}; got '{value}'"):
            validate(Config.from_dict({key: value}))
    with pytest.raises(MyGPT2Error, match="Did you mean 'rmsnorm'"):
        validate(Config.from_dict({"norm": "rmsnrom"}))
    with pytest.raises(MyGPT2Error, match=r"head size .* must be even; it is 36 / 4 = 9"):
        validate(Config.from_dict({"pos_emb": "rope", "n_emb": 36, "n_heads": 4}))
    with pytest.raises(MyGPT2Error, match="logit_softcap must be 0"):
        validate(Config.from_dict({"logit_softcap": -1.0}))
    with pytest.raises(MyGPT2Error, match="mlp must be one of"):
        GPT(ModelConfig(mlp="gelu2"))  # the Python API checks too
    with pytest.warns(UserWarning, match="only the causal mask tells it the order"):
        validate(Config.from_dict({"pos_emb": "none"}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        validate(Config.from_dict({"qk_norm": True}))  # with layernorm: fine, no warning


def test_a_checkpoint_without_the_knobs_loads_as_gpt2(tmp_path: Path):
    model = tiny_gpt()
    old = Config(model=model.config).to_dict()
    for key in ("norm", "pos_emb", "mlp", "qk_norm", "tie_embeddings", "logit_softcap"):
        del old["model"][key]  # as written before the knobs existed
    save_checkpoint(tmp_path / "checkpoint.pt", {"model": model.state_dict(), "config": old})
    loaded = model_from_checkpoint(load_checkpoint(tmp_path / "checkpoint.pt"))
    assert loaded.config == model.config == ModelConfig(**{**vars(model.config)})
    idx = torch.randint(0, V, (1, 10))
    torch.testing.assert_close(loaded.eval()(idx)[0], model(idx)[0], atol=0, rtol=0)


def test_a_variant_checkpoint_keeps_its_knobs(tmp_path: Path):
    model = variant("all")
    cfg = Config(model=dataclasses.replace(model.config))
    save_checkpoint(tmp_path / "c.pt", {"model": model.state_dict(), "config": cfg.to_dict()})
    loaded = model_from_checkpoint(load_checkpoint(tmp_path / "c.pt")).eval()
    assert loaded.config == model.config
    idx = torch.randint(0, V, (1, 10))
    torch.testing.assert_close(loaded(idx)[0], model(idx)[0], atol=0, rtol=0)
    save_safetensors(model, tmp_path / "model.safetensors")  # the untied head goes with it
    from safetensors.torch import load_file

    assert torch.equal(
        load_file(tmp_path / "model.safetensors")["lm_head.weight"], model.lm_head.weight
    )


def test_resume_with_a_changed_knob_and_init_from_with_a_knob_are_refused(tmp_path, capsys):
    from mygpt2.cli import main
    from mygpt2.tokenizer import RegexTokenizer

    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 400, encoding="utf-8")
    RegexTokenizer().save(tmp_path / "bytes.json")  # no merges: bytes
    args = [
        f"--data={text}",
        f"--tokenizer_path={tmp_path / 'bytes.json'}",
        f"--cache_dir={tmp_path / 'cache'}",
        f"--out_dir={tmp_path / 'run'}",
        *("--n_layers=1", "--n_heads=2", "--n_emb=16", "--T=16", "--batch_size=4"),
        *("--macro_batch_size=4", "--eval_interval=2", "--eval_batches=1", "--device=cpu"),
        *("--norm=rmsnorm", "--pos_emb=rope", "--mlp=swiglu", "--qk_norm=true"),
        *("--tie_embeddings=false", "--logit_softcap=15"),
    ]
    assert main(["train", *args, "--max_steps=2"]) == 0
    capsys.readouterr()
    assert main(["train", *args, "--max_steps=4", "--resume", "--mlp=gelu"]) == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and "mlp: checkpoint 'swiglu', given 'gelu'" in err
    assert main(["train", *args, "--max_steps=3", "--resume"]) == 0  # unchanged: continues
    capsys.readouterr()

    hf_dir = tmp_path / "gpt2"
    hf_model((1, 2, 16, 16, 257)).save_pretrained(hf_dir)
    init = [a for a in args if not a.startswith(("--n_", "--out_dir", "--T="))]
    init = [a for a in init if a.split("=")[0][2:] not in ("norm", "pos_emb", "mlp")]
    out = f"--out_dir={tmp_path / 'ft'}"
    assert main(["train", *init, out, f"--init_from={hf_dir}", "--max_steps=1"]) == 2
    err = capsys.readouterr().err
    assert f"--init_from {hf_dir} fixes the model's shape" in err
    assert "qk_norm: weights False, given True" in err


# ----------------------------------------------------------------------------- Hugging Face


def test_export_refuses_a_variant_naming_its_knobs(tmp_path: Path):
    for name, named in [("relu2", "mlp='relu2'"), ("untied", "tie_embeddings=False")]:
        with pytest.raises(MyGPT2Error, match=f"sets {named}, so it is not a GPT-2") as e:
            save_pretrained(variant(name), tmp_path / name)
        assert "not a Llama either" in str(e.value)
        assert not (tmp_path / name).exists()  # nothing written
    with pytest.raises(
        MyGPT2Error, match=r"\(qk_norm=True, logit_softcap=5.0; Llama is rope \+ rmsnorm"
    ):
        save_pretrained(variant("all"), tmp_path / "all")


@pytest.mark.parametrize(
    ("tied", "bias", "pad"),
    [
        (True, True, False),
        (True, False, False),
        (False, True, False),
        (False, False, False),
        (True, True, True),  # pad_vocab: 61 ids in 64 rows
        (False, False, True),
    ],
)
def test_the_llama_variant_exports_to_llama_for_causal_lm(
    tmp_path: Path, tied: bool, bias: bool, pad: bool
):
    transformers = pytest.importorskip("transformers")
    model = variant("gpt2", **LLAMA, tie_embeddings=tied, bias=bias, pad_vocab=pad)
    with torch.no_grad():  # MLP inputs of order 1, where a wrong activation would show
        for block in model.transformer.h:
            block.mlp.c_fc.weight.mul_(20)
    save_pretrained(model, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "llama"
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    idx = torch.randint(0, V, (2, 24))
    with torch.no_grad():
        ours, _ = model(idx)
        theirs = hf(idx).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert (hf.lm_head.weight is hf.model.embed_tokens.weight) == tied


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_relu_squared_equals_autograd_through_relu_and_square(dtype):
    """The relu2 MLP's own backward gives bit for bit what autograd through F.relu(x).square()
    gives, zeros at and below 0 included."""
    from mygpt2.model import relu_squared

    torch.manual_seed(0)
    x = torch.randn(4, 9, 64).to(dtype)
    x[0, 0, :4] = 0.0
    g = torch.randn(4, 9, 64).to(dtype)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = relu_squared(a), torch.nn.functional.relu(b).square()
    ya.backward(g)
    yb.backward(g)
    assert torch.equal(ya, yb) and torch.equal(a.grad, b.grad)
    assert torch.autograd.gradcheck(
        relu_squared, (torch.randn(3, 5, dtype=torch.float64, requires_grad=True),)
    )
