"""The optimizer and the learning-rate schedule: which tensors decay, what a resume changes,
and the schedule's key points."""

from __future__ import annotations

import itertools

import pytest
import torch

from mygpt2.config import Config, ModelConfig
from mygpt2.model import GPT
from mygpt2.optim import get_lr, make_optimizer, set_hyperparameters


def test_cosine_schedule_key_points():
    cfg = Config()
    cfg.train.max_steps, cfg.train.warmup_ratio, cfg.train.lr, cfg.train.min_lr = 100, 0.1, 1.0, 0.1
    assert get_lr(0, cfg) == pytest.approx(0.1)  # first warmup step: lr / warmup
    assert get_lr(9, cfg) == pytest.approx(1.0)  # end of warmup: the peak
    assert get_lr(10, cfg) == pytest.approx(1.0)  # cosine starts at the peak
    assert get_lr(55, cfg) == pytest.approx(0.55)  # halfway through the decay: the midpoint
    assert get_lr(100, cfg) == pytest.approx(0.1)  # the floor at max_steps
    lrs = [get_lr(s, cfg) for s in range(10, 100)]
    assert all(a >= b for a, b in itertools.pairwise(lrs))  # monotone decay


def test_no_warmup_starts_at_the_peak():
    cfg = Config()
    cfg.train.max_steps, cfg.train.warmup_ratio, cfg.train.lr, cfg.train.min_lr = 10, 0.0, 2.0, 0.0
    assert get_lr(0, cfg) == pytest.approx(2.0)
    assert get_lr(10, cfg) == 0.0


@pytest.mark.parametrize("bias", [True, False])
def test_weight_decay_on_matrices_only(bias):
    """Exactly the 2-D tensors (token and position embeddings, the blocks' weights) decay;
    biases and LayerNorm gains never do. The tied head is the token embedding, counted once."""
    cfg = Config()
    cfg.train.weight_decay = 0.1
    model = GPT(ModelConfig(n_layers=2, n_heads=2, n_emb=16, T=8, vocab_size=50, bias=bias))
    opt = make_optimizer(model, cfg, torch.device("cpu"))
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    plain = {names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    want = {
        "transformer.wte.weight",
        "transformer.wpe.weight",
        *(
            f"transformer.h.{i}.{m}.weight"
            for i in range(2)
            for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
        ),
    }
    assert decayed == want
    assert plain == set(names.values()) - want
    assert all(".ln_" in n or n.endswith(".bias") for n in plain)
    assert {g["weight_decay"] for g in opt.param_groups if g["weight_decay"] > 0} == {0.1}
    # every parameter exactly once
    all_params = [p for g in opt.param_groups for p in g["params"]]
    assert len(all_params) == len({id(p) for p in all_params}) == len(list(model.parameters()))


def test_optimizer_takes_the_configs_hyperparameters():
    cfg = Config()
    cfg.train.lr, cfg.train.beta1, cfg.train.beta2, cfg.train.weight_decay = 3e-3, 0.8, 0.9, 0.2
    model = GPT(ModelConfig(n_layers=1, n_heads=2, n_emb=16, T=8, vocab_size=50))
    opt = make_optimizer(model, cfg, torch.device("cpu"))
    assert isinstance(opt, torch.optim.AdamW)
    for group in opt.param_groups:
        assert group["lr"] == 3e-3 and group["betas"] == (0.8, 0.9)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.2, 0.0]


def test_set_hyperparameters_overrides_a_restored_state():
    """What --resume does: a saved optimizer state, then the config's values on top."""
    cfg = Config()
    model = GPT(ModelConfig(n_layers=1, n_heads=2, n_emb=16, T=8, vocab_size=50))
    saved = make_optimizer(model, cfg, torch.device("cpu")).state_dict()
    cfg.train.beta1, cfg.train.beta2, cfg.train.weight_decay = 0.5, 0.6, 0.01
    opt = make_optimizer(model, Config(), torch.device("cpu"))
    opt.load_state_dict(saved)
    set_hyperparameters(opt, cfg)
    assert [g["betas"] for g in opt.param_groups] == [(0.5, 0.6), (0.5, 0.6)]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0]  # gains still 0
