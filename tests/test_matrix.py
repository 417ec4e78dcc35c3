"""Every model variant through every tool, each held against the model's own forward.

A tool that recomputes part of the network (embeddings, positions, the final norm, the
softcap) silently misses the variants it was not written for. Here each variant of
`tests/test_variants.py` goes through evaluation (`score_stream`, `batches_nll`, tasks), the
analyses (logit lens, direct logit attribution, patching), the health probe, the series
metrics, serving and export, and each result is compared with what `model(idx)` itself gives.
The run-time evaluations (`--eval_data`, `--eval_tasks`) get a short training run per variant.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from models import tiny_gpt
from test_variants import VARIANTS, perturb_gains
from torch.nn import functional as F

from mygpt2.dynamics.health import HealthProbe, attention_entropy
from mygpt2.dynamics.metrics import lens_loss, measure, prev_token_score, val_loss
from mygpt2.errors import MyGPT2Error
from mygpt2.evaluation.tasks import Item, Task, score_task
from mygpt2.evaluation.text import TextStream, batches_nll, score_stream
from mygpt2.inspect import attention, direct_logit_attribution, logit_lens, patch
from mygpt2.tokenizer import RegexTokenizer

V = 61  # tiny_gpt's vocabulary
EOT = 60  # an id used as end-of-text in the hand-made streams


def variant(name: str) -> torch.nn.Module:
    return perturb_gains(tiny_gpt(0, **VARIANTS[name]))


def forward_nll(model, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-log p(target) at every position from the model's own logits (real vocabulary)."""
    with torch.no_grad():
        logits, _ = model(idx)
    logp = logits[..., : model.config.vocab_size].double().log_softmax(-1)
    return -logp.gather(-1, targets[..., None]).squeeze(-1)


@pytest.fixture(params=list(VARIANTS))
def name(request) -> str:
    return request.param


# ----------------------------------------------------------------------------- evaluation


def test_eval_scores_equal_the_forward_on_the_same_windows(name):
    model = variant(name)
    T = model.config.T
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, EOT, (3 * T + 5,), generator=g)
    tokens[0] = tokens[40] = EOT  # documents start after an end-of-text token
    stream = TextStream(tokens.numpy(), EOT, int((tokens != EOT).sum()), 0, 2)
    for stride in (T, T // 2):
        score = score_stream(model, stream, stride=stride, batch_size=2)
        # by hand: each window's forward, its last `scored` targets, end-of-text left out
        nats, n, end = 0.0, 0, 0
        while end < len(tokens) - 1:
            new_end = min(end + (T if end == 0 else stride), len(tokens) - 1)
            start = max(0, new_end - T)
            idx, tgt = tokens[start:new_end], tokens[start + 1 : new_end + 1]
            nll = forward_nll(model, idx[None], tgt[None])[0]
            keep = torch.arange(len(idx)) >= len(idx) - (new_end - end)
            keep &= tgt != EOT
            nats, n, end = nats + nll[keep].sum().item(), n + int(keep.sum()), new_end
        assert score.tokens == n
        assert score.loss == pytest.approx(nats / n, rel=1e-5), (name, stride)


def test_validation_loss_equals_the_forward(name):
    model = variant(name)
    g = torch.Generator().manual_seed(2)
    windows = torch.randint(0, V, (5, model.config.T + 1), generator=g)
    x, y = windows[:, :-1], windows[:, 1:].clone()
    y[0, :3] = -100  # padding targets are not counted
    expected = forward_nll(model, x, y.clamp(min=0))[y != -100].mean().item()
    nats, count = batches_nll(model, [(x[:2], y[:2]), (x[2:], y[2:])])
    assert int(count) == int((y != -100).sum())
    assert (nats / count).item() == pytest.approx(expected, rel=1e-5)
    with torch.no_grad():
        _, model_loss = model(windows[:, :-1], windows[:, 1:])
    assert val_loss(model, windows)[0].item() == pytest.approx(model_loss.item(), rel=1e-5)


def test_task_scores_are_sums_of_the_forwards_log_probabilities(name):
    tok = RegexTokenizer()  # byte level: ids 0..255 are bytes
    model = perturb_gains(tiny_gpt(0, vocab_size=tok.vocab_size, **VARIANTS[name]))
    items = [Item("ab", ["cd", "xyz"], 0, 1), Item("hello", [" w", "!!"], 1, 2)]
    result = score_task(model, tok, Task("mini", None, items))
    for item, pred in zip(items, result.predictions, strict=True):
        ctx = tok.encode_ordinary(item.context)
        sums = []
        for ending in item.endings:
            end = tok.encode_ordinary(" " + ending)
            ids = torch.tensor(ctx + end)
            nll = forward_nll(model, ids[None, :-1], ids[None, 1:])[0, len(ctx) - 1 :]
            sums.append(-nll.sum().item())
        assert pred["logprob_sum"] == pytest.approx(sums, rel=1e-4, abs=1e-5)
        assert pred["pred"] == max(range(len(sums)), key=lambda i: (sums[i], -i))


# ----------------------------------------------------------------------------- analyses


def test_run_with_cache_of_every_hook_point_returns_the_plain_logits_in_bf16(name):
    """Looking does not change what is looked at: caching every hook point (norm scales,
    attention scores and patterns included) leaves the bf16 logits bit for bit the plain
    forward's."""
    model = variant(name).bfloat16()
    idx = torch.randint(0, V, (2, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        plain, _ = model(idx)
        cached, cache = model.run_with_cache(idx)
    assert torch.equal(cached, plain)
    assert torch.equal(cache["hook_logits"], plain)


def test_logit_lens_last_layer_is_the_output(name):
    model = variant(name)
    idx = torch.randint(0, V, (2, 12))
    with torch.no_grad():
        logits, _ = model(idx)
    torch.testing.assert_close(logit_lens(model, idx)[-1], logits[..., :V], atol=1e-5, rtol=1e-5)
    windows = torch.randint(0, V, (3, 13))
    assert lens_loss(model, windows)[-1].item() == pytest.approx(
        val_loss(model, windows)[0].item(), rel=1e-5
    )


def test_direct_logit_attribution_sums_to_the_logit_or_refuses_by_name(name):
    model = variant(name)
    idx = torch.randint(0, V, (2, 10))
    if model.config.logit_softcap:
        with pytest.raises(MyGPT2Error, match="logit_softcap"):
            direct_logit_attribution(model, idx, 7)
        return
    result = direct_logit_attribution(model, idx, 7, pos=-2)
    with torch.no_grad():
        logits, _ = model(idx)
    torch.testing.assert_close(result.logit, logits[:, -2, 7])
    torch.testing.assert_close(result.values.sum(0), result.logit, atol=1e-4, rtol=1e-4)


def test_patching_clean_into_clean_gives_the_clean_metric(name):
    model = variant(name)
    clean = torch.randint(0, V, (1, 8))
    metric = lambda logits: logits[0, -1, 3] - logits[0, -1, 5]  # noqa: E731
    with torch.no_grad():
        logits, _ = model(clean)
    want = metric(logits).item()
    for site in ("resid_pre", "z"):
        grid = patch(model, clean, clean, site, metric)
        torch.testing.assert_close(grid, torch.full_like(grid, want), atol=1e-5, rtol=1e-5)


def test_health_attention_equals_the_models_own_pattern(name):
    model = variant(name).train()
    model.config.dropout = 0.0
    idx = torch.randint(0, V, (3, 16))
    probe = HealthProbe(model)
    with probe.watching():
        model(idx, idx)
    stats = probe.blocks
    patterns = attention(model, idx)  # (L, B, H, T, T): the forward's own hook_pattern
    for layer in range(model.config.n_layers):
        want = attention_entropy(patterns[layer])
        got = torch.tensor(stats[layer]["attn_entropy"])
        torch.testing.assert_close(got, want.float(), atol=1e-4, rtol=1e-4)
        assert stats[layer]["resid_rms"] > 0


def test_series_metrics_run_and_agree(name):
    model = variant(name)
    windows = torch.randint(0, V, (4, model.config.T + 1))
    assert measure(model, "val_loss", windows).item() == pytest.approx(
        val_loss(model, windows).item()
    )
    scores = prev_token_score(model, length=16, batch=2)
    patterns = attention(model, torch.randint(0, V, (1, 16)))
    assert scores.shape == patterns.shape[::2][:2] == (model.config.n_layers, model.config.n_heads)
    for metric in ("induction", "prev_token", "lens_loss"):
        values = measure(model, metric, windows)
        assert torch.isfinite(values).all(), metric


# ----------------------------------------------------------------------------- serve and export


def test_serve_greedy_equals_generate(name):
    pytest.importorskip("starlette")
    httpx = pytest.importorskip("httpx")
    from mygpt2.generate import generate
    from mygpt2.serve.app import Background, create_app
    from mygpt2.serve.completions import Limits
    from mygpt2.serve.engine import Engine

    tok = RegexTokenizer()
    model = perturb_gains(tiny_gpt(0, vocab_size=tok.vocab_size, T=32, **VARIANTS[name]))
    with torch.no_grad():  # sharper choices, so float noise cannot flip a greedy pick
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4)
    prompt = [104, 105, 32, 116]
    [want] = generate(model, [prompt], max_new_tokens=12, temperature=0)
    engine = Engine(model, tok, "m", Limits(max_tokens=64, max_choices=2))
    try:
        with Background(create_app(engine)) as server:
            body = {"model": "m", "prompt": [prompt], "max_tokens": 12, "temperature": 0}
            reply = httpx.post(server.url + "/v1/completions", json=body, timeout=60).json()
    finally:
        engine.close()
    text = reply["choices"][0]["text"]
    eot = tok.eot_id
    if eot is not None and eot in want:
        want = want[: want.index(eot)]
    assert text == tok.decode(want)


def test_export_gives_transformers_logits_or_refuses_by_name(name, tmp_path):
    transformers = pytest.importorskip("transformers")
    from mygpt2.hf import export_architecture, save_pretrained

    model = variant(name)
    try:
        arch = export_architecture(model.config)
    except MyGPT2Error as e:
        knobs = [k for k in VARIANTS[name] if k in str(e)]
        assert knobs, f"the refusal names no knob of {name}: {e}"
        with pytest.raises(MyGPT2Error):
            save_pretrained(model, tmp_path / "x")
        assert not (tmp_path / "x" / "model.safetensors").exists()
        return
    save_pretrained(model, tmp_path / "x")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "x").eval()
    idx = torch.randint(0, V, (2, 12))
    with torch.no_grad():
        want, _ = model(idx)
        got = hf(idx).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert arch in ("gpt2", "llama")


# ----------------------------------------------------------------------------- during training


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shakespeare_path):
    from test_train import make_corpus

    return make_corpus(tmp_path_factory.mktemp("matrix"), shakespeare_path)


FLAGS = {
    "norm": "norm",
    "pos_emb": "pos_emb",
    "mlp": "mlp",
    "qk_norm": "qk_norm",
    "tie_embeddings": "tie_embeddings",
    "logit_softcap": "logit_softcap",
}


def test_training_with_eval_data_and_tasks_scores_as_mygpt2_eval(name, corpus, tmp_path):
    from test_train import tiny_args

    from mygpt2.checkpoint import load_model_and_tokenizer
    from mygpt2.commands.args import load_config
    from mygpt2.corpus import open_corpus
    from mygpt2.evaluation.tasks import read_task
    from mygpt2.evaluation.text import read_stream
    from mygpt2.train import train

    held_out = tmp_path / "held.txt"
    text = Path(corpus["data"]).read_text(encoding="utf-8")
    held_out.write_text(text[-5000:], encoding="utf-8")
    task = tmp_path / "mini.jsonl"
    items = [
        {"context": "ROMEO: I", "choices": [" will", " qz"], "answer": 0},
        {"context": "KING: My", "choices": [" xx", " lord"], "answer": 1},
    ]
    task.write_text("".join(json.dumps(i) + "\n" for i in items), encoding="utf-8")
    knobs = {FLAGS[k]: str(v).lower() for k, v in VARIANTS[name].items()}
    out = tmp_path / "run"
    argv = tiny_args(
        corpus, out, eval_data=held_out, eval_tasks=task, max_steps=2, eval_interval=2, **knobs
    )
    cfg = load_config(argv)
    train(cfg)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if r["kind"] == "eval"][-1]
    model, tok = load_model_and_tokenizer(load_config(["--out_dir", str(out)]))
    budget = cfg.train.eval_batches * cfg.train.batch_size * cfg.model.T
    stream = read_stream(open_corpus(load_config(["--data", str(held_out)]).data), tok, budget)
    score = score_stream(model, stream)
    assert last["eval_data_loss"] == pytest.approx(score.loss, rel=1e-5)
    assert math.isfinite(last["val_loss"])
    result = score_task(model, tok, read_task(task))
    assert last["acc/mini"] == pytest.approx(result.acc)
    # and `mygpt2 eval` itself, as a user runs it, reports the same loss
    from mygpt2.cli import main

    report = tmp_path / "eval.json"
    main(["eval", "--out_dir", str(out), "--data", str(held_out), "--json", str(report)])
    [row] = json.loads(report.read_text())["models"]
    assert row["loss"] == pytest.approx(
        score_stream(
            model, read_stream(open_corpus(load_config(["--data", str(held_out)]).data), tok)
        ).loss,
        rel=1e-5,
    )


def test_softcap_changes_what_evaluation_reports():
    """The bug this file exists for: evaluation once ignored the softcap."""
    capped = perturb_gains(tiny_gpt(0, logit_softcap=1.0))
    with torch.no_grad():
        capped.lm_head.weight.mul_(50)  # logits well past the cap, so the cap bends them
    windows = torch.randint(
        0, V, (2, capped.config.T + 1), generator=torch.Generator().manual_seed(3)
    )
    x, y = windows[:, :-1], windows[:, 1:]
    with torch.no_grad():
        raw = F.cross_entropy(capped.lm_head(capped.hidden(x)).flatten(0, 1), y.flatten())
        _, own = capped(x, y)
    assert abs(raw.item() - own.item()) > 0.1  # the cap matters at this scale
    assert val_loss(capped, windows).item() == pytest.approx(own.item(), rel=1e-5)
