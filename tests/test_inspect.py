"""The analyses (mygpt2.inspect) and `mygpt2 inspect`, held against TransformerLens where it has
the same thing (logit lens, patched logits, patching grids, attention patterns, the pieces of
direct logit attribution) and against sums and definitions elsewhere.

`tl_reference` (TransformerLens's bridge and our GPT on the same non-trivial random GPT-2
weights) comes from test_hooks.py.
"""

from __future__ import annotations

import json
import math
import re

import pytest
import test_hooks
import torch
from models import prompt_ids, tiny_gpt
from test_hooks import L, T, V, lively

from mygpt2.checkpoint import save_checkpoint
from mygpt2.cli import main
from mygpt2.commands.args import load_config
from mygpt2.errors import MyGPT2Error
from mygpt2.inspect import (
    attention,
    attention_json,
    direct_logit_attribution,
    lens_top_k,
    logit_lens,
    loss_html,
    loss_table,
    patch,
    save_attention_png,
    save_heatmap_png,
    token_losses,
)
from mygpt2.tokenizer import RegexTokenizer

tl_reference = test_hooks.tl_reference  # the fixture, shared


def clean_and_corrupt(n: int = 8):
    g = torch.Generator().manual_seed(3)
    clean = torch.randint(0, V, (2, n), generator=g)
    corrupt = clean.clone()
    corrupt[:, 2] = (corrupt[:, 2] + 7) % V
    corrupt[:, 5] = (corrupt[:, 5] + 11) % V
    return clean, corrupt


def logit_difference(logits: torch.Tensor) -> torch.Tensor:
    return logits[:, -1, 5].mean() - logits[:, -1, 9].mean()


# ------------------------------------------------------------------- against TransformerLens


def test_logit_lens_equals_transformer_lens(tl_reference):
    bridge, ours, idx = tl_reference
    lens = logit_lens(ours, idx)
    assert lens.shape == (L, 3, T, V)
    with torch.no_grad():
        tl_logits, tl_cache = bridge.run_with_cache(idx)
        for layer in range(L):
            resid = tl_cache[f"blocks.{layer}.hook_resid_post"]
            expected = bridge.unembed(bridge.ln_final(resid))
            torch.testing.assert_close(lens[layer], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(lens[-1], tl_logits, atol=1e-5, rtol=0)  # the model's logits
    torch.testing.assert_close(lens[-1], ours.run_with_hooks(idx).detach(), atol=1e-6, rtol=0)


def test_patched_logits_and_patching_grids_equal_transformer_lens(tl_reference):
    patching = pytest.importorskip("transformer_lens.patching")
    bridge, ours, _ = tl_reference
    clean, corrupt = clean_and_corrupt()
    with torch.no_grad():
        _, tl_clean = bridge.run_with_cache(clean)
    _, our_clean = ours.run_with_cache(clean)

    def put_back(act, hook_or_name, pos=2, source=None):
        act = act.clone()
        act[:, pos] = source[:, pos]
        return act

    name = "blocks.1.hook_resid_pre"
    with torch.no_grad():
        tl_patched = bridge.run_with_hooks(
            corrupt, fwd_hooks=[(name, lambda a, hook: put_back(a, hook, source=tl_clean[name]))]
        )
    ours_patched = ours.run_with_hooks(
        corrupt, [(name, lambda a, n: put_back(a, n, source=our_clean[name]))]
    )
    torch.testing.assert_close(ours_patched.detach(), tl_patched, atol=1e-5, rtol=0)

    expected = patching.get_act_patch_resid_pre(bridge, corrupt, tl_clean, logit_difference)
    grid = patch(ours, clean, corrupt, "resid_pre", logit_difference)
    assert grid.shape == (L, 8) and expected.abs().max() > 0.1
    torch.testing.assert_close(grid, expected, atol=1e-5, rtol=0)
    one_by_one = patch(ours, clean, corrupt, "hook_resid_pre", logit_difference, batch_tokens=1)
    torch.testing.assert_close(one_by_one, expected, atol=1e-5, rtol=0)

    heads = patching.get_act_patch_attn_head_out_all_pos(
        bridge, corrupt, tl_clean, logit_difference
    )
    torch.testing.assert_close(
        patch(ours, clean, corrupt, "z", logit_difference), heads, atol=1e-5, rtol=0
    )


def test_attention_patterns_equal_transformer_lens(tl_reference, tmp_path):
    bridge, ours, idx = tl_reference
    patterns = attention(ours, idx)
    assert patterns.shape == (L, 3, 4, T, T)
    with torch.no_grad():
        _, tl_cache = bridge.run_with_cache(idx, names_filter=lambda n: "hook_pattern" in n)
    for layer in range(L):
        torch.testing.assert_close(
            patterns[layer], tl_cache[f"blocks.{layer}.attn.hook_pattern"], atol=1e-6, rtol=0
        )
    torch.testing.assert_close(patterns.sum(-1), torch.ones(L, 3, 4, T))
    assert patterns.triu(diagonal=1).abs().max() == 0  # causal

    tokens = [f"t{i}" for i in range(T)]
    doc = json.loads(json.dumps(attention_json(patterns, tokens)))  # what a file holds
    assert doc["tokens"] == tokens
    got = torch.tensor(doc["attention"])  # layers x heads x queries x keys, first batch row
    assert got.shape == (L, 4, T, T)
    torch.testing.assert_close(got, patterns[:, 0], atol=1e-6, rtol=0)
    png = tmp_path / "grid.png"
    save_attention_png(patterns, tokens, png, title="test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_direct_logit_attribution_sums_to_the_logit_and_heads_match_transformer_lens(
    tl_reference,
):
    bridge, ours, idx = tl_reference
    token = torch.tensor([3, 17, 40])  # one per row
    dla = direct_logit_attribution(ours, idx, token, pos=-2)
    logits = ours.run_with_hooks(idx).detach()
    expected_logit = logits[torch.arange(3), -2, token]
    torch.testing.assert_close(dla.logit, expected_logit, atol=1e-6, rtol=0)
    torch.testing.assert_close(dla.values.sum(0), expected_logit, atol=1e-5, rtol=0)
    assert dla.labels[:3] == ["embed", "pos_embed", "L0H0"] and dla.labels[-1] == "ln_final bias"
    assert len(dla.labels) == 2 + L * (4 + 2) + 1

    # each head's term, from TransformerLens's z and final LayerNorm scale and our weights
    with torch.no_grad():
        _, tl_cache = bridge.run_with_cache(idx)
        scale = tl_cache["ln_final.hook_scale"][:, -2]  # (B, 1)
        direction = ours.lm_head.weight[token] * ours.transformer.ln_f.weight  # (B, C)
        for layer in range(L):
            z = tl_cache[f"blocks.{layer}.attn.hook_z"][:, -2]  # (B, H, hs)
            W_O = ours.transformer.h[layer].attn.c_proj.weight.view(4, 8, 32)
            for h in range(4):
                out = z[:, h] @ W_O[h]
                out = out - out.mean(-1, keepdim=True)
                term = (out / scale * direction).sum(-1)
                torch.testing.assert_close(dla.heads()[layer, h], term, atol=1e-5, rtol=0)
    assert dla.heads().shape == (L, 4, 3) and dla.mlps().shape == (L, 3)


# --------------------------------------------------------------------- by definition


def test_lens_top_k_ranks_by_hand():
    lens = torch.tensor([[3.0, 1.0, 2.0, 0.0], [0.0, 1.0, 2.0, 3.0]])[:, None, None, :]
    top = lens_top_k(lens, k=2, target=2)
    assert top.ids.tolist() == [[0, 2], [3, 2]]
    assert top.target_rank.tolist() == [2, 2]
    torch.testing.assert_close(top.probs[0], lens[0, 0, 0].softmax(-1)[[0, 2]])
    assert lens_top_k(lens, k=1, target=0).target_rank.tolist() == [1, 4]


def test_patching_the_only_difference_at_the_embedding_restores_the_clean_run():
    model = lively(tiny_gpt(seed=2))
    clean = prompt_ids(61, 10)
    corrupt = list(clean)
    corrupt[4] = (corrupt[4] + 1) % 61

    def metric(logits):
        return logits[0, -1, 7]

    clean_value = metric(model.run_with_hooks(clean)).item()
    corrupt_value = metric(model.run_with_hooks(corrupt)).item()
    grid = patch(model, clean, corrupt, "resid_pre", metric)
    assert abs(clean_value - corrupt_value) > 0.01
    assert grid[0, 4] == pytest.approx(clean_value, abs=1e-5)  # all of position 4's input
    others = torch.cat([grid[0, :4], grid[0, 5:]])
    torch.testing.assert_close(others, torch.full_like(others, corrupt_value), atol=1e-5, rtol=0)
    # before position 4 nothing differs at any layer
    torch.testing.assert_close(grid[:, :4], torch.full((2, 4), corrupt_value), atol=1e-5, rtol=0)
    assert grid[-1, -1].item() != pytest.approx(corrupt_value, abs=1e-4)  # moved by then
    for site in ("resid_mid", "resid_post", "attn_out", "mlp_out"):
        assert patch(model, clean, corrupt, site, metric).shape == (2, 10)
    assert patch(model, clean, corrupt, "z", metric).shape == (2, 2)


def test_token_losses_are_the_per_token_cross_entropy_and_render():
    model = lively(tiny_gpt(seed=5))
    idx = torch.tensor([prompt_ids(61, 12), prompt_ids(61, 12, seed=4)])
    losses = token_losses(model, idx)
    assert losses.shape == (2, 11)
    _, mean = model(idx[:, :-1], targets=idx[:, 1:])
    torch.testing.assert_close(losses.mean(), mean.detach())

    tokens = ["<a>", " b", "\n", "c"]
    values = [1.0, 2.0, 0.5]
    page = loss_html(tokens, values, title="t & t")
    assert page.startswith("<!doctype html>") and "t &amp; t" in page
    assert ".text { font-family: monospace; white-space: pre-wrap;" in page
    assert "&lt;a&gt;" in page and "<a>" not in page  # escaped
    assert page.count("<span style=") == 3 and "rgba(214, 39, 40, 1.000)" in page
    table = loss_table(tokens, values).splitlines()
    assert table[0].split() == ["pos", "token", "nats", "bits", "p"]
    assert table[2].split() == ["1", "'", "b'", "1.00", "1.44", "0.3679"]
    assert "'\\n'" in table[3] and table[-1].startswith("mean loss 1.167 nats")


# --------------------------------------------------------------------------------- bad input


def test_bad_input_is_a_clear_error(tmp_path):
    model = tiny_gpt()  # T = 24, vocabulary 61
    a = prompt_ids(61, 6)
    with pytest.raises(MyGPT2Error, match=r"same shape .* clean is \(1, 6\), corrupt \(1, 5\)"):
        patch(model, a, a[:5], "resid_pre", lambda logits: logits.sum())
    with pytest.raises(MyGPT2Error, match="unknown patching site 'resid'; choose one of"):
        patch(model, a, a, "resid", lambda logits: logits.sum())
    with pytest.raises(MyGPT2Error, match=r"metric must return one number.*\(1, 6, 61\)"):
        patch(model, a, a, "resid_pre", lambda logits: logits)
    with pytest.raises(MyGPT2Error, match="more than the model's context length T=24"):
        logit_lens(model, prompt_ids(61, 25))
    with pytest.raises(MyGPT2Error, match="at least two tokens"):
        token_losses(model, [3])
    with pytest.raises(MyGPT2Error, match="one id or one per batch row"):
        direct_logit_attribution(model, a, [1, 2])
    with pytest.raises(MyGPT2Error, match="3 token labels for 6 positions"):
        attention_json(attention(model, a), ["x"] * 3)
    with pytest.raises(MyGPT2Error, match="needs 2 row and 3 column labels"):
        save_heatmap_png(torch.zeros(2, 3), tmp_path / "x.png", ["a"], ["b"])
    assert model.training is False  # analyses restore the mode they found


def test_analyses_restore_training_mode():
    model = tiny_gpt().train()
    token_losses(model, prompt_ids(61, 5))
    assert model.training


# ---------------------------------------------------------------------------- command line


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    """A tiny untrained checkpoint with a small byte-level BPE tokenizer of 270 tokens; the
    model's vocabulary is larger (300), as a padded one would be, so ids past the tokenizer's
    can come up in tables."""
    root = tmp_path_factory.mktemp("inspect-cmd")
    tok = RegexTokenizer()
    tok.train("def hello(name):\n    return 'hello ' + name\n" * 20, vocab_size=270)
    tok.save(root / "tokenizer.json")
    cfg = load_config(
        [f"--tokenizer_path={root / 'tokenizer.json'}", "--n_layers=2", "--n_heads=2",
         "--n_emb=32", "--T=32", "--vocab_size=300"]
    )  # fmt: skip
    model = lively(tiny_gpt(seed=9, n_layers=2, n_heads=2, n_emb=32, T=32, vocab_size=300))
    save_checkpoint(root / "checkpoint.pt", {"model": model.state_dict(), "config": cfg.to_dict()})
    return root


def inspect(checkpoint_dir, *args: str) -> list[str]:
    return ["inspect", *args, f"--out_dir={checkpoint_dir}", "--device=cpu"]


def test_command_views_print_tables_and_write_files(checkpoint_dir, tmp_path, capsys):
    text = "def hello(name):\n    return name"
    assert (
        main(inspect(checkpoint_dir, "tokens", "--text", text, "--html", str(tmp_path / "t.html")))
        == 0
    )
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["pos", "token", "nats", "bits", "p"]
    assert (
        "mean loss" in out and (tmp_path / "t.html").read_text(encoding="utf-8").count("<span") > 3
    )

    png, js = tmp_path / "a.png", tmp_path / "a.json"
    args = ["attention", "--text", text, "--png", str(png), "--json", str(js)]
    assert main(inspect(checkpoint_dir, *args)) == 0
    out = capsys.readouterr().out
    assert "L1 H1:" in out and png.is_file()
    doc = json.loads(js.read_text(encoding="utf-8"))
    assert len(doc["attention"]) == 2 and len(doc["attention"][0]) == 2
    assert len(doc["tokens"]) == len(doc["attention"][0][0])

    assert (
        main(inspect(checkpoint_dir, "lens", "--text", text, "--target", " name", "--k", "3")) == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert "rank of ' name'" in lines[1] and len(lines) == 4  # title, header, 2 layers

    assert main(inspect(checkpoint_dir, "dla", "--file", str(tmp_path / "t.html"), "--k", "4")) == 2
    assert "more than the model's context length T=32" in capsys.readouterr().err
    assert (
        main(inspect(checkpoint_dir, "dla", "--text", text, "--png", str(tmp_path / "d.png"))) == 0
    )
    out = capsys.readouterr().out
    logit, total = re.search(r"\) = (\S+); its 11 terms sum to (\S+)\n", out).groups()
    assert math.isclose(float(logit), float(total), abs_tol=2e-3) and (tmp_path / "d.png").is_file()
    assert (
        main(inspect(checkpoint_dir, "dla", "--text", text, "--target", "#7", "--foil", "#9")) == 0
    )
    out = capsys.readouterr().out
    assert "of logit('\\x07') - logit('\\t') after position 17" in out
    logit, total = re.search(r"\) = (\S+); its 11 terms sum to (\S+)\n", out).groups()
    assert math.isclose(float(logit), float(total), abs_tol=2e-3)

    corrupt = "def hello(hello):\n    return name"
    args = ["patch", "--text", text, "--corrupt", corrupt, "--target", " name", "--png", str(png)]
    assert main(inspect(checkpoint_dir, *args)) == 0
    out = capsys.readouterr().out
    assert "activation patching at blocks.*.hook_resid_pre" in out and "'name'" in out
    assert main(inspect(checkpoint_dir, *args[:-2], "--site", "z", "--foil", "#5")) == 0
    assert "one head's clean output" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--text", "x"], "say what to look at: mygpt2 inspect attention|lens|patch|tokens|dla"),
        (["lens"], "give the text with --text TEXT or --file PATH"),
        (["lens", "--text", "x", "--file", "y"], "one of them"),
        (["tokens", "--text", "x", "--png", "a.png"], "--png is for mygpt2 inspect attention, patch, dla, health or series"),
        (["patch", "--text", "x"], "needs --corrupt TEXT and --target TOKEN"),
        (["lens", "--text", "hello", "--target", " hello name"], "is 2 tokens"),
        (["lens", "--text", "hello", "--pos", "x"], "--pos takes a whole number"),
        (["lens", "--text", "hello", "--pos", "40"], "--pos 40 is outside the text's"),
        (["patch", "--text", "def hello", "--corrupt", "def", "--target", "#3"], "same number of tokens"),
        (["lens", "--file", "/no/such/file"], "does not exist"),
    ],
)  # fmt: skip
def test_command_bad_input(checkpoint_dir, capsys, args, words):
    assert main(inspect(checkpoint_dir, *args)) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
