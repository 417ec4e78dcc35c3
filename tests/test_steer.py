"""Steering (`steer=` on mygpt2.generate): adding alpha * W_dec[f] at an SAE's hook while
sampling. The references are written out here: the activation the model sees is the plain one
plus alpha * W_dec[f] (read back from the model's own cache), and a steered cached generation
is compared at every step with a full recompute that runs the whole sequence through the model
with a hand-written adding hook (no cache, no mygpt2 steering code).

The SAE is a stand-in with random weights, shaped like `mygpt2.sae`'s (cfg.hook_name, cfg.d_in,
cfg.d_sae, W_dec (d_sae, d_in)): steering reads nothing else."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from models import prompt_ids, tiny_gpt

from mygpt2.checkpoint import save_checkpoint
from mygpt2.cli import main
from mygpt2.commands.args import load_config
from mygpt2.errors import MyGPT2Error
from mygpt2.generate import generate, generate_stream, steering_hooks
from mygpt2.sae import SAE, SAEConfig, load, save
from mygpt2.sample import load_model
from mygpt2.tokenizer import RegexTokenizer


def stand_in(hook: str, d_in: int, d_sae: int = 12, seed: int = 0) -> SimpleNamespace:
    """An object with the parts of an SAE that steering reads."""
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(d_sae, d_in, generator=g)
    W_dec = W_dec / W_dec.norm(dim=1, keepdim=True)
    cfg = SimpleNamespace(hook_name=hook, d_in=d_in, d_sae=d_sae)
    return SimpleNamespace(cfg=cfg, W_dec=torch.nn.Parameter(W_dec))


def test_the_hook_sees_the_activation_plus_alpha_times_the_decoder_row():
    model = tiny_gpt(seed=1)
    hook = "blocks.0.hook_resid_post"
    sae = stand_in(hook, 32)
    ids = prompt_ids(61, 9)
    _, plain = model.run_with_cache(ids, names=hook)
    # two entries on one hook add up; the steered value is what flows on (and what a cache sees)
    with model.hooks(steering_hooks(model, [(sae, 3, 2.5), (sae, 7, -1.0)])):
        _, steered = model.run_with_cache(ids, names=hook)
    expected = plain[hook] + 2.5 * sae.W_dec[3].detach() - 1.0 * sae.W_dec[7].detach()
    torch.testing.assert_close(steered[hook], expected, rtol=0, atol=1e-6)


def test_alpha_zero_is_plain_generation_token_for_token():
    model = tiny_gpt(seed=2, T=16)
    sae = stand_in("blocks.1.hook_resid_mid", 32)
    prompts = [prompt_ids(61, 5, seed=1), prompt_ids(61, 3, seed=2)]  # left-padded batch
    for kw in ({"temperature": 0}, {"temperature": 1.0, "seed": 4, "top_k": 20}):
        plain = generate(model, prompts, 30, **kw)  # past T: the window slides
        assert generate(model, prompts, 30, steer=[(sae, 5, 0.0)], **kw) == plain
    assert len(set(plain[0])) > 10  # seeded draws vary: every step's distribution counts


def steered_reference(model, prompt, hook, direction, steps):
    """Greedy tokens and each step's next-token logits, recomputing the whole (cropped to T)
    sequence every step with a hook that adds `direction`."""
    seq, tokens, logits = list(prompt), [], []
    add = [(hook, lambda x, name: x + direction.to(x.dtype).reshape(x.shape[2:]))]
    for _ in range(steps):
        with torch.no_grad():
            last = model.run_with_hooks(seq[-model.config.T :], fwd_hooks=add)[0, -1]
        last = last[: model.config.vocab_size]
        logits.append(last)
        tokens.append(int(last.argmax()))
        seq.append(tokens[-1])
    return tokens, logits


@pytest.mark.parametrize(
    ("overrides", "hook", "d_in"),
    [
        ({}, "blocks.0.hook_resid_post", 32),
        ({}, "blocks.1.attn.hook_z", 32),  # (n_heads, d_head) per position
        ({}, "blocks.0.mlp.hook_post", 128),
        ({"pos_emb": "rope", "norm": "rmsnorm"}, "blocks.1.hook_resid_pre", 32),
    ],
)
def test_steered_cached_generation_equals_a_steered_full_recompute(overrides, hook, d_in):
    model = tiny_gpt(seed=3, T=16, **overrides)
    sae = stand_in(hook, d_in, seed=5)
    prompt = prompt_ids(61, 6, seed=3)
    alpha, feature, steps = 6.0, 4, 20  # 6 + 20 > T: the cache is rebuilt as the window slides
    seen: list[torch.Tensor] = []

    def keep_logits(module, args, kwargs, out):  # generation's forwards (the fit check has none)
        if kwargs.get("cache") is not None:
            seen.append(out[0][0, -1].clone())

    keep = model.register_forward_hook(keep_logits, with_kwargs=True)
    try:
        stream = generate_stream(model, prompt, steps, temperature=0, steer=[(sae, feature, alpha)])
        got = [int(t[0]) for t in stream]
    finally:
        keep.remove()
    want, want_logits = steered_reference(
        model, prompt, hook, alpha * sae.W_dec[feature].detach(), steps
    )
    assert got == want
    plain = generate(model, prompt, steps, temperature=0)[0]
    assert got != plain  # the steering changed the text, so the comparison means something
    assert len(seen) == steps + 1  # the prefill, then a forward per token but the last
    for step in range(steps):  # the distribution each token was drawn from, step by step
        torch.testing.assert_close(
            seen[step][: model.config.vocab_size], want_logits[step], rtol=1e-4, atol=1e-4
        )
    # the hooks are gone when the stream ends
    assert model.active_hooks is None


def test_a_strong_feature_at_the_last_layer_makes_its_own_top_token():
    # alpha large: the final norm sees (almost) only the direction, so every greedy token is the
    # one the head gives the direction itself
    model = tiny_gpt(seed=4)
    sae = stand_in("blocks.1.hook_resid_post", 32, seed=9)
    d = sae.W_dec[2].detach()
    with torch.no_grad():
        top = int(model.lm_head(model.transformer.ln_f(1e4 * d))[:61].argmax())
    out = generate(model, prompt_ids(61, 4), 8, temperature=0, steer=[(sae, 2, 1e4)])
    assert out == [[top] * 8]


def test_bad_steering_is_a_one_line_error():
    model = tiny_gpt(seed=0)
    sae = stand_in("blocks.0.hook_resid_post", 32, d_sae=12)
    cases = [
        (
            [(sae, 12, 1.0)],
            "steer at 'blocks.0.hook_resid_post': feature 12 is out of range: the SAE has 12",
        ),
        ([(sae, -1, 1.0)], "feature -1 is out of range"),
        ([(sae, 1.5, 1.0)], "a feature is a whole number"),
        ([(sae, 1, float("nan"))], "alpha is a finite number"),
        ([(sae, 1)], "(sae, feature, alpha) triples"),
        ([("dir", 1, 1.0)], "is no SAE"),
        (
            [(stand_in("blocks.5.hook_resid_post", 32), 0, 1.0)],
            "the SAE reads 'blocks.5.hook_resid_post', which this 2-layer model lacks",
        ),
        (
            [(stand_in("blocks.0.hook_resid_post", 64), 0, 1.0)],
            "the SAE reads blocks.0.hook_resid_post with d_in=64 values per token, but this "
            "model's blocks.0.hook_resid_post holds 32",
        ),
        ([(stand_in("blocks.0.attn.hook_pattern", 32), 0, 1.0)], "not one vector per token"),
        ([(stand_in("blocks.*.hook_resid_post", 32), 0, 1.0)], "not the glob"),
    ]
    for steer, message in cases:
        with pytest.raises(MyGPT2Error) as err:
            list(generate_stream(model, [1, 2], 3, steer=steer))
        assert message in str(err.value) and "\n" not in str(err.value)
        assert model.active_hooks is None


# ---------------------------------------------------------------------- mygpt2 sample --steer
def byte_run(root: Path) -> Path:
    """A checkpoint of a tiny random model (weights scaled up so its choices vary) with a small
    byte-level BPE tokenizer, as `mygpt2 sample` loads one."""
    tok = RegexTokenizer()
    tok.train("ROMEO: hello there, friend! world\n" * 30, vocab_size=270)
    tok.save(root / "tokenizer.json")
    shape = dict(n_layers=2, n_heads=2, n_emb=32, T=64, vocab_size=tok.vocab_size)
    flags = [f"--{k}={v}" for k, v in shape.items()]
    cfg = load_config([f"--tokenizer_path={root / 'tokenizer.json'}", *flags])
    model = tiny_gpt(seed=5, **shape)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(6)
    tokenizer = {"name": tok.name, "fingerprint": tok.fingerprint()}
    state = {"model": model.state_dict(), "config": cfg.to_dict(), "tokenizer": tokenizer}
    save_checkpoint(root / "checkpoint.pt", state)
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> SimpleNamespace:
    """A run to sample from and an SAE (random, mygpt2's format) at its blocks.1.hook_resid_mid."""
    root = byte_run(tmp_path_factory.mktemp("steer"))
    sae = SAE(SAEConfig(d_in=32, d_sae=16, k=4, hook_name="blocks.1.hook_resid_mid"))
    save(sae, root / "sae")
    model, tok = load_model(load_config([f"--out_dir={root}", "--device=cpu"]))
    return SimpleNamespace(
        root=root, sae_dir=root / "sae", sae=load(root / "sae"), model=model, tok=tok
    )


def sample_cli(run, capsys, *flags: str) -> tuple[int, str, str]:
    argv = ["sample", f"--out_dir={run.root}", "--start=ROMEO:", "--temperature=0"]
    code = main([*argv, "--max_new_tokens=24", "--device=cpu", *flags])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_sample_steer_flag_is_the_api_steer(run, capsys):
    prompt = run.tok.encode_ordinary("ROMEO:")
    code, plain, _ = sample_cli(run, capsys)
    assert code == 0
    code, zero, err = sample_cli(run, capsys, f"--steer={run.sae_dir}:3:0")
    assert code == 0 and zero == plain  # alpha 0: the same text
    assert "steering with feature 3 x 0 at blocks.1.hook_resid_mid" in err
    # two features, the flag repeated (both spellings): what generate(steer=...) gives
    steer = [(run.sae, 3, 8.0), (run.sae, 5, -4.0)]
    want = generate(run.model, prompt, 24, temperature=0, steer=steer)[0]
    code, steered, _ = sample_cli(
        run, capsys, "--steer", f"{run.sae_dir}:3:8", f"--steer={run.sae_dir}:5:-4"
    )
    assert code == 0 and steered != plain
    assert run.tok.decode(want) in steered
    text = (run.root / "generated.txt").read_text(encoding="utf-8")
    assert text == f"--- sample 1 ---\nROMEO:{run.tok.decode(want)}\n"


def test_sample_steer_bad_input_is_one_line_and_exit_2(run, capsys, tmp_path):
    misfit = tmp_path / "misfit"
    save(SAE(SAEConfig(d_in=32, d_sae=8, k=2, hook_name="blocks.4.hook_resid_post")), misfit)
    cases = [
        (f"{run.sae_dir}:16:1.0", "feature 16 is out of range: the SAE has 16 features"),
        (f"{run.sae_dir}:-1:1.0", "feature -1 is out of range"),
        (f"{run.sae_dir}:x:1.0", "--steer takes DIR:FEATURE:ALPHA"),
        (f"{run.sae_dir}:2:inf", "--steer takes DIR:FEATURE:ALPHA"),
        ("3:1.0", "--steer takes DIR:FEATURE:ALPHA"),
        (f"{tmp_path}:1:1.0", str(tmp_path)),  # not an SAE directory
        (f"{misfit}:1:1.0", "the SAE reads 'blocks.4.hook_resid_post', which this 2-layer model"),
    ]
    for spec, message in cases:
        code, out, err = sample_cli(run, capsys, f"--steer={spec}")
        assert code == 2, spec
        errors = [line for line in err.splitlines() if "error:" in line]
        assert len(errors) == 1 and message in errors[0], err
        assert "Traceback" not in err and "--- sample" not in out
    assert sample_cli(run, capsys, "--steer")[0] == 2


def test_interactive_prompt_is_steered(run, capsys):
    from mygpt2.commands.sample import interactive

    cfg = load_config([f"--out_dir={run.root}", "--device=cpu", "--temperature=0"])
    cfg.sample.max_new_tokens = 16
    lines = iter(["ROMEO:"])

    def typed(prompt: str) -> str:
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    ids = run.tok.encode_ordinary("ROMEO:")
    texts = []
    for steer in ([], [(run.sae, 3, 8.0)]):
        lines = iter(["ROMEO:"])
        interactive(cfg, typed, steer=steer)
        want = run.tok.decode(generate(run.model, ids, 16, temperature=0, steer=steer)[0])
        assert "ROMEO:" + want in capsys.readouterr().out
        texts.append(want)
    assert texts[0] != texts[1]
