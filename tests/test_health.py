"""Health statistics (`mygpt2.dynamics.health`) against hand computation on tiny models: attention
entropy of known patterns, the update ratio of a plain SGD step, the dead-unit fraction of a
crafted MLP; in the training loop: per-tensor gradient norms that combine to the logged
global norm, and nothing extra when health is off. (A resume continuing the health log is
tested with the checkpoint series, in test_series.py.)"""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from models import tiny_gpt
from test_train import make_corpus, tiny_config

from mygpt2.cli import main
from mygpt2.dynamics.health import (
    HealthProbe,
    attention_entropy,
    dead_fraction,
    first_token_attention,
    health_warnings,
    layer_of,
)
from mygpt2.metrics import _scalars
from mygpt2.model import GPT
from mygpt2.train import train, train_step


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shakespeare_path) -> dict[str, str]:
    return make_corpus(tmp_path_factory.mktemp("corpus"), shakespeare_path)


def batch(model: GPT, rows: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (rows, model.config.T + 1), generator=g)
    return ids[:, :-1], ids[:, 1:]


def probe_step(model: GPT, optimizer: torch.optim.Optimizer, batches) -> dict:
    probe = HealthProbe(model)
    result = train_step(model.train(), optimizer, batches, health=probe)
    return result.health


# ----------------------------------------------------------------------------- statistics
def test_entropy_and_first_token_attention_of_known_patterns():
    third = 1 / 3
    pattern = torch.tensor(
        [[[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [third, third, third]]]  # one head
    )[None]  # (1, 1, 3, 3)
    expected = (0.0 + math.log(2) + math.log(3)) / 3
    assert attention_entropy(pattern).tolist() == pytest.approx([expected], abs=1e-6)
    # queries after the first: 0.5 and 1/3 on the first key
    assert first_token_attention(pattern).tolist() == pytest.approx([(0.5 + third) / 2])


def test_the_probe_sees_uniform_attention_when_queries_are_zero():
    """Zero query weights: every head attends uniformly to the keys it may see, so its mean
    entropy is mean(log(i + 1)) over positions i, and its weight on the first key 1/(i + 1)."""
    model = tiny_gpt(n_layers=2, n_heads=2, n_emb=16, T=12)
    C = model.config.n_emb
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_attn.weight[:, :C] = 0.0  # the query columns
            block.attn.c_attn.bias[:C] = 0.0
    row = probe_step(model, torch.optim.SGD(model.parameters(), lr=0.0), [batch(model)])
    T = model.config.T
    entropy = sum(math.log(i + 1) for i in range(T)) / T
    first = sum(1 / (i + 1) for i in range(1, T)) / (T - 1)
    for layer in ("L0", "L1"):
        assert row["layers"][layer]["attn_entropy"] == pytest.approx([entropy] * 2, rel=1e-5)
        assert row["layers"][layer]["attn_first"] == pytest.approx([first] * 2, rel=1e-5)
    assert row["collapsed_heads"] == 0.0


@pytest.mark.parametrize(
    "variant", [{}, {"pos_emb": "rope"}, {"qk_norm": True}, {"pos_emb": "rope", "qk_norm": True}]
)
def test_the_probe_rebuilds_the_pattern_the_model_attends_with(variant):
    """Entropy and first-token attention from the probe's rebuilt patterns equal those of the
    model's own written-out attention (`hook_pattern`), also with rotary embeddings and
    normalised queries and keys."""
    model = tiny_gpt(seed=4, n_layers=2, n_heads=2, n_emb=16, T=12, **variant)
    with torch.no_grad():  # sharper patterns than the initial, nearly uniform ones
        for block in model.transformer.h:
            block.attn.c_attn.weight.mul_(20.0)
    x, y = batch(model)
    _, cache = model.eval().run_with_cache(x, names="blocks.*.attn.hook_pattern")
    row = probe_step(model, torch.optim.SGD(model.parameters(), lr=0.0), [(x, y)])
    for layer in range(2):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]
        stats = row["layers"][f"L{layer}"]
        assert stats["attn_entropy"] == pytest.approx(attention_entropy(pattern).tolist(), abs=1e-5)
        assert stats["attn_first"] == pytest.approx(
            first_token_attention(pattern).tolist(), abs=1e-5
        )


def test_update_ratio_and_gradient_norms_of_a_known_sgd_step():
    """Plain SGD moves each tensor by lr * grad: its update ratio is lr ||g|| / ||w||. (In
    float64: in float32, w + dw - w loses the digits of an update 1e-5 the size of w.)"""
    lr = 0.05
    model = tiny_gpt(n_layers=2, n_heads=2, n_emb=16, T=8).double()
    reference = tiny_gpt(n_layers=2, n_heads=2, n_emb=16, T=8).double()
    reference.load_state_dict(model.state_dict())
    x, y = batch(model, rows=4)
    _, loss = reference.train()(x, y)  # the mean over tokens, as train_step's gradients
    loss.backward()
    expected = {
        name: (p.grad.norm().item(), p.detach().norm().item())
        for name, p in reference.named_parameters()
    }
    row = probe_step(model, torch.optim.SGD(model.parameters(), lr=lr), [(x, y)])
    assert set(row["tensors"]) == set(expected)
    for name, (g, w) in expected.items():
        stats = row["tensors"][name]
        assert stats["grad_norm"] == pytest.approx(g, rel=1e-5), name
        assert stats["weight_norm"] == pytest.approx(w, rel=1e-6), name
        if w == 0:  # a bias still at its zero init: no ratio
            assert stats["update_ratio"] is None, name
        else:
            assert stats["update_ratio"] == pytest.approx(lr * g / w, rel=1e-5), name
    # per layer: the norms of all its tensors together
    names = [n for n in expected if layer_of(n) == "L1"]
    g2 = sum(expected[n][0] ** 2 for n in names)
    w2 = sum(expected[n][1] ** 2 for n in names)
    assert row["layers"]["L1"]["update_ratio"] == pytest.approx(
        lr * math.sqrt(g2) / math.sqrt(w2), rel=1e-4
    )
    assert row["grad_norm"] == pytest.approx(math.sqrt(sum(g * g for g, _ in expected.values())))


def test_dead_fraction_of_a_crafted_input():
    post = torch.zeros(2, 3, 4)
    post[0, 1, 1] = 0.5  # unit 1 fires once: alive
    post[..., 2] = 0.005  # unit 2 stays within the tolerance: off
    post[..., 3] = 1.0
    assert dead_fraction(post) == 0.5  # units 0 and 2


def test_the_probe_counts_mlp_units_switched_off_by_their_bias():
    model = tiny_gpt(n_layers=1, n_heads=2, n_emb=16, T=8)
    fc = model.transformer.h[0].mlp.c_fc
    width = fc.weight.shape[1]
    with torch.no_grad():
        fc.weight[:, : width // 4] = 0.0
        fc.bias[: width // 4] = -10.0  # GELU(-10) = 0: off at every position
        fc.bias[width // 4 :] = 4.0  # far from zero: on
    row = probe_step(model, torch.optim.SGD(model.parameters(), lr=0.0), [batch(model)])
    assert row["layers"]["L0"]["dead_frac"] == 0.25
    # RMS of the block's output, by hand from the same forward
    _, cache = model.eval().run_with_cache(batch(model)[0], names="blocks.0.hook_resid_post")
    resid = cache["blocks.0.hook_resid_post"]
    assert row["layers"]["L0"]["resid_rms"] == pytest.approx(resid.pow(2).mean().sqrt().item())


def test_layers_of_parameter_names():
    assert layer_of("transformer.wte.weight") == "embed"
    assert layer_of("transformer.wpe.weight") == "embed"
    assert layer_of("transformer.h.11.mlp.c_fc.weight") == "L11"
    assert layer_of("transformer.ln_f.bias") == "final"


def test_warnings_name_what_is_wrong():
    def layer(grad, ratio, dead=0.0, first=(0.1, 0.1)):
        return {"grad_norm": grad, "update_ratio": ratio, "dead_frac": dead, "attn_first": first}

    healthy = {"L0": layer(1.0, 1e-3), "L1": layer(0.5, 2e-3)}
    rows = [{"step": s, "layers": healthy} for s in (10, 20)]
    assert health_warnings(rows) == []
    sick = {"L0": layer(1e-4, 1e-3, dead=0.7), "L1": layer(1.0, 0.5, first=(0.95, 0.2))}
    # the update ratio is judged by the median of the last 5 rows: 3 of them sick
    warnings = health_warnings([*rows, *({"step": s, "layers": sick} for s in (30, 40, 50))])
    text = "\n".join(warnings)
    assert "L1: update ratio 5.0e-01" in text and "far above" in text
    assert "grow toward the output" in text and "L1 1.00e+00" in text
    assert "L1H0" in text and "first token" in text and "L1H1" not in text
    assert "L0: 70% of the MLP units" in text
    assert len(warnings) == 4


def test_health_rows_become_nested_tensorboard_tags():
    row = {"kind": "health", "step": 5, "grad_norm": 1.5, "layers": {"L0": {"e": [0.5, 0.25]}}}
    assert _scalars(row) == [("grad_norm", 1.5), ("layers/L0/e/0", 0.5), ("layers/L0/e/1", 0.25)]


# ----------------------------------------------------------------------------- in the loop
def rows_of(out_dir, kind: str) -> list[dict]:
    lines = (out_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_per_tensor_gradient_norms_combine_to_the_logged_global_norm(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    train(tiny_config(corpus, out, max_steps=6, eval_interval=3, health_interval=2))
    health, steps = rows_of(out, "health"), {r["step"]: r for r in rows_of(out, "train")}
    assert [r["step"] for r in health] == [2, 4, 6]
    for row in health:
        combined = math.sqrt(sum(t["grad_norm"] ** 2 for t in row["tensors"].values()))
        logged = steps[row["step"]]["grad_norm"]
        assert combined == pytest.approx(logged, rel=1e-5)
        layers = math.sqrt(sum(v["grad_norm"] ** 2 for v in row["layers"].values()))
        assert layers == pytest.approx(logged, rel=1e-5)
        assert row["tokens"] == steps[row["step"]]["tokens"]
    assert (out / "health.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # mygpt2 inspect health redraws it and reads the last row back per layer
    (out / "health.png").unlink()
    capsys.readouterr()
    assert main(["inspect", "health", "--out_dir", str(out)]) in (0, None)
    printed = capsys.readouterr().out
    assert "health at step 6 (3 health rows)" in printed
    last = health[-1]["layers"]
    for layer in ("embed", "L0", "L1", "final"):
        assert any(
            line.split()[:2] == [layer, f"{last[layer]['grad_norm']:.3g}"]
            for line in printed.splitlines()
        ), layer
    assert (out / "health.png").is_file()


def test_inspect_health_without_health_rows_says_how_to_record_them(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text('{"kind": "train", "step": 1}\n', encoding="utf-8")
    assert main(["inspect", "health", "--out_dir", str(tmp_path)]) == 2
    assert "train with --health_interval N" in capsys.readouterr().err


def test_health_off_installs_no_hooks_and_makes_no_probe(corpus, tmp_path, monkeypatch):
    def no_probe(*args, **kwargs):
        raise AssertionError("a HealthProbe was made with health_interval 0")

    forward = GPT.forward

    def plain_forward(self, *args, **kwargs):
        assert self.active_hooks is None, "hooks were installed during training"
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(sys.modules["mygpt2.train"], "HealthProbe", no_probe)
    monkeypatch.setattr(GPT, "forward", plain_forward)
    out = tmp_path / "run"
    train(tiny_config(corpus, out, max_steps=4, eval_interval=2))
    assert rows_of(out, "health") == [] and not (out / "health.png").exists()
    assert not (out / "checkpoints").exists()  # keep_checkpoints none: no series either


# ------------------------------------------------------------- defaults and boundaries (#22)


def test_gradient_norms_are_divided_by_the_loss_scale():
    """Under a GradScaler the gradients are the loss scale times the true ones: the probe
    reports the true norms, those of the unscaled loss's backward."""
    model = tiny_gpt(n_layers=1, n_heads=2, n_emb=16, T=8).train()
    reference = tiny_gpt(n_layers=1, n_heads=2, n_emb=16, T=8).train()
    x, y = batch(model)
    _, loss = reference(x, y)
    loss.backward()
    _, loss = model(x, y)
    (loss * 1024.0).backward()  # what fp16 training with a loss scale of 1024 leaves
    probe = HealthProbe(model)
    probe.before_update(scale=1024.0)
    expected = [p.grad.norm().item() for p in reference.parameters()]
    assert probe.grad_norms == pytest.approx(expected, rel=1e-4)


def ratio_rows(*ratios: float, grads=(1.0, 1.0)) -> list[dict]:
    """Health rows whose L0 has the given update ratios (one row each), L1 a healthy 1e-3."""
    return [
        {
            "step": 10 * (i + 1),
            "layers": {
                "L0": {"grad_norm": grads[0], "update_ratio": r},
                "L1": {"grad_norm": grads[1], "update_ratio": 1e-3},
            },
        }
        for i, r in enumerate(ratios)
    ]


def test_warning_thresholds_are_ten_times_outside_the_band():
    """The band is 1e-4..1e-2; a warning needs the median 10x outside it (above 1e-1, below
    1e-5), and a ratio of exactly 0 (nothing moved: lr 0) is no ratio to judge."""
    assert health_warnings(ratio_rows(0.05)) == []  # 5x above: within 10x
    assert "far above" in health_warnings(ratio_rows(0.2))[0]
    assert health_warnings(ratio_rows(2e-5)) == []  # 5x below
    assert "far below" in health_warnings(ratio_rows(5e-6))[0]
    assert health_warnings(ratio_rows(0.0)) == []


def test_the_median_is_over_the_last_rows_only():
    """Five sick rows, then five healthy ones: the last five decide (no warning), and the
    other way round they warn."""
    assert health_warnings(ratio_rows(*[0.5] * 5, *[1e-3] * 5)) == []
    warnings = health_warnings(ratio_rows(*[1e-3] * 5, *[0.5] * 5))
    assert len(warnings) == 1 and "median of the last 5 health steps" in warnings[0]


def test_gradient_spread_warns_over_100x_only():
    assert health_warnings(ratio_rows(1e-3, grads=(1.0, 50.0))) == []  # 50x apart
    warnings = health_warnings(ratio_rows(1e-3, grads=(1.0, 200.0)))
    assert len(warnings) == 1 and "grow toward the output" in warnings[0]
    assert "vanish toward the output" in health_warnings(ratio_rows(1e-3, grads=(200.0, 1.0)))[0]
