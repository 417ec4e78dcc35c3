"""The optimizers and the learning-rate schedules: which tensors go to which optimizer and
decay, Muon's steps against torch's Muon on nn.Linear's layout, what a resume changes, each
schedule's key points."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from test_train import make_corpus, tiny_config

from mygpt2.checkpoint import load_checkpoint
from mygpt2.commands.args import load_config
from mygpt2.config import Config, ModelConfig
from mygpt2.errors import MyGPT2Error
from mygpt2.model import GPT
from mygpt2.optim import Optimizers, get_lr, make_optimizer, set_hyperparameters
from mygpt2.train import train, train_step


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


# ----------------------------------------------------------------------------- schedules


def schedule_config(schedule: str, **train) -> Config:
    cfg = Config()
    t = cfg.train
    t.schedule, t.max_steps, t.warmup_ratio, t.lr, t.min_lr = schedule, 100, 0.1, 1.0, 0.1
    for key, value in train.items():
        setattr(t, key, value)
    return cfg


@pytest.mark.parametrize("schedule", ["cosine", "linear", "wsd", "constant"])
def test_every_schedule_warms_up_linearly_to_the_peak(schedule):
    cfg = schedule_config(schedule)
    assert [get_lr(s, cfg) for s in range(10)] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert get_lr(10, cfg) == pytest.approx(1.0)  # the first step after warmup is at the peak


def test_linear_schedule_key_points():
    cfg = schedule_config("linear")
    assert get_lr(55, cfg) == pytest.approx(0.55)  # halfway from step 10 to 100: midway
    assert get_lr(99, cfg) == pytest.approx(1.0 - 89 / 90 * 0.9)
    assert get_lr(100, cfg) == pytest.approx(0.1)  # min_lr at max_steps
    lrs = [get_lr(s, cfg) for s in range(10, 101)]
    steps = [a - b for a, b in itertools.pairwise(lrs)]
    assert steps == pytest.approx([0.9 / 90] * 90)  # a straight line


def test_wsd_schedule_holds_then_decays_over_the_last_decay_ratio():
    cfg = schedule_config("wsd", decay_ratio=0.2)
    # stable from the end of warmup up to the decay's start at 100 - 20 = step 80
    assert [get_lr(s, cfg) for s in range(10, 81)] == [1.0] * 71
    assert get_lr(90, cfg) == pytest.approx(0.55)  # halfway down
    assert get_lr(99, cfg) == pytest.approx(1.0 - 19 / 20 * 0.9)
    assert get_lr(100, cfg) == pytest.approx(0.1)
    # decay_ratio 1 without warmup: a linear decay over the whole run
    whole = schedule_config("wsd", decay_ratio=1.0, warmup_ratio=0.0)
    assert get_lr(0, whole) == 1.0 and get_lr(50, whole) == pytest.approx(0.55)


def test_constant_schedule_stays_at_the_peak():
    cfg = schedule_config("constant")
    assert {get_lr(s, cfg) for s in range(10, 101)} == {1.0}


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--schedule=cosin"],
            "schedule must be one of cosine, linear, wsd, constant, got 'cosin'",
        ),
        (["--optimizer=adam"], "optimizer must be one of adamw, muon, sgd, got 'adam'"),
        (["--schedule=wsd", "--warmup_ratio=0.5", "--decay_ratio=0.6"], "must be at most 1"),
        (["--momentum=1"], r"momentum must be in \(0, 1\)"),
        (["--decay_ratio=-0.1"], r"decay_ratio must be in \[0, 1\]"),
        (["--target_val_loss=-1"], "target_val_loss must be 0 or more"),
    ],
)
def test_bad_optimizer_and_schedule_settings_are_refused(flags, message):
    with pytest.raises(MyGPT2Error, match=message):
        load_config(flags)


# ----------------------------------------------------------------------------- grouping

BLOCK_MATRICES = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def groups_by_name(opt, model) -> list[tuple[str, set[str], dict]]:
    """(optimizer kind, parameter names, hyperparameters) of each group."""
    names = {id(p): n for n, p in model.named_parameters()}
    parts = opt.optimizers if isinstance(opt, Optimizers) else (opt,)
    return [
        (type(o).__name__, {names[id(p)] for p in g["params"]}, g)
        for o in parts
        for g in o.param_groups
    ]


@pytest.mark.parametrize("tie", [True, False])
def test_muon_takes_the_blocks_matrices_and_adamw_the_rest(tie):
    """As the speedrun splits them: Muon for the attention and MLP weights inside the blocks;
    AdamW for the embeddings and the head (decayed) and for biases and gains (not decayed)."""
    cfg = Config()
    cfg.train.optimizer, cfg.train.weight_decay = "muon", 0.1
    model = GPT(
        ModelConfig(n_layers=2, n_heads=2, n_emb=16, T=8, vocab_size=50, tie_embeddings=tie)
    )
    opt = make_optimizer(model, cfg, torch.device("cpu"))
    assert isinstance(opt, Optimizers)
    groups = groups_by_name(opt, model)
    muon = set().union(*(names for kind, names, _ in groups if kind == "Muon"))
    assert muon == {f"transformer.h.{i}.{m}.weight" for i in range(2) for m in BLOCK_MATRICES}
    adamw = [(names, g) for kind, names, g in groups if kind == "AdamW"]
    embeddings = {"transformer.wte.weight", "transformer.wpe.weight"} | (
        set() if tie else {"lm_head.weight"}
    )
    decayed = set().union(*(n for n, g in adamw if g["weight_decay"] > 0))
    assert decayed == embeddings
    plain = set().union(*(n for n, g in adamw if g["weight_decay"] == 0))
    assert plain and all(".ln_" in n or n.endswith(".bias") for n in plain)
    # every parameter exactly once
    every = [p for g in opt.param_groups for p in g["params"]]
    assert len(every) == len({id(p) for p in every}) == len(list(model.parameters()))
    # Muon decays its matrices too
    assert all(g["weight_decay"] > 0 for kind, _, g in groups if kind == "Muon")


def test_sgd_uses_nesterov_momentum_and_decays_matrices_only():
    cfg = Config()
    cfg.train.optimizer, cfg.train.momentum, cfg.train.weight_decay = "sgd", 0.9, 0.05
    model = GPT(ModelConfig(n_layers=1, n_heads=2, n_emb=16, T=8, vocab_size=50))
    opt = make_optimizer(model, cfg, torch.device("cpu"))
    assert isinstance(opt, torch.optim.SGD)
    for group in opt.param_groups:
        assert group["nesterov"] and group["momentum"] == 0.9
        matrices = all(p.dim() == 2 for p in group["params"])
        assert group["weight_decay"] == (0.05 if matrices else 0.0)


class ReferenceSpeedrunSplit:
    """The reference for one Muon + AdamW step: torch's Muon on each block matrix laid out
    (out, in) as nn.Linear holds it (what torch's shape rule assumes), AdamW on the rest,
    each at its own peak rate. Used as `train_step`'s optimizer, so the gradients are the
    same tensors as ours."""

    def __init__(self, model: GPT, cfg: Config) -> None:
        t = cfg.train
        named = list(model.named_parameters())
        self.hidden = [p for n, p in named if n.startswith("transformer.h.") and p.dim() == 2]
        # leaves of their own, transposed to (out, in); square ones as they are: orthogonalising
        # G or G^T is the same in exact arithmetic, but bf16 rounds the two ways differently
        self.linear = [torch.nn.Parameter(self._layout(p).detach().clone()) for p in self.hidden]
        self.muon = torch.optim.Muon(
            self.linear, lr=t.muon_lr, weight_decay=t.weight_decay, momentum=t.momentum
        )
        rest = [p for n, p in named if not (n.startswith("transformer.h.") and p.dim() == 2)]
        self.adamw = torch.optim.AdamW(
            [
                {"params": [p for p in rest if p.dim() == 2], "weight_decay": t.weight_decay},
                {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0},
            ],
            lr=t.lr,
            betas=(t.beta1, t.beta2),
            fused=True,  # as ours on a CPU: the same arithmetic, so the same gradients next step
        )
        self.param_groups: list[dict] = []  # train_step's lr reaches nothing: rates are fixed

    @staticmethod
    def _layout(t: torch.Tensor) -> torch.Tensor:
        return t if t.shape[0] == t.shape[1] else t.T

    @torch.no_grad()
    def step(self) -> None:
        for p, q in zip(self.hidden, self.linear, strict=True):
            q.grad = self._layout(p.grad).clone()
        self.muon.step()
        self.adamw.step()
        for p, q in zip(self.hidden, self.linear, strict=True):
            p.copy_(self._layout(q))

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.adamw.zero_grad(set_to_none=set_to_none)
        self.muon.zero_grad(set_to_none=set_to_none)
        for p in self.hidden:  # the model's own matrices are in neither optimizer
            p.grad = None


def test_muon_steps_equal_torch_muon_on_the_nn_linear_layout():
    """Our weights are stored (in, out); two steps of ours equal torch's Muon (and AdamW) on
    the same matrices laid out (out, in), weight decay and momentum included."""
    cfg = Config()
    t = cfg.train
    t.optimizer, t.lr, t.muon_lr, t.weight_decay, t.momentum = "muon", 3e-3, 0.05, 0.1, 0.9
    torch.manual_seed(0)
    shape = ModelConfig(n_layers=1, n_heads=2, n_emb=16, T=8, vocab_size=40)
    ours, ref = GPT(shape), GPT(shape)
    ref.load_state_dict(ours.state_dict())
    opt = make_optimizer(ours, cfg, torch.device("cpu"))
    reference = ReferenceSpeedrunSplit(ref, cfg)
    before = {n: p.detach().clone() for n, p in ours.named_parameters()}
    gen = torch.Generator().manual_seed(1)
    for _ in range(2):
        batch = [(torch.randint(0, 40, (2, 8), generator=gen),) * 2]
        train_step(ours, opt, batch, lr=t.lr)
        train_step(ref, reference, batch)
    for (name, a), b in zip(ours.named_parameters(), ref.parameters(), strict=True):
        assert not torch.equal(a, before[name]), name  # every tensor moved
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_muon_groups_scale_by_the_shape_rule():
    """Per hand: c_fc (16 -> 64) steps sqrt(4) = 2 times muon_lr, the MLP's c_proj (64 -> 16)
    once; torch would read our (in, out) layout the other way round (factor 2 on c_proj), so
    the groups' lr_scale is muon_lr / lr times 2 and 1/2."""
    cfg = Config()
    cfg.train.optimizer, cfg.train.lr, cfg.train.muon_lr = "muon", 0.01, 0.02
    model = GPT(ModelConfig(n_layers=1, n_heads=2, n_emb=16, T=8, vocab_size=50))
    opt = make_optimizer(model, cfg, torch.device("cpu"))
    scale = {tuple(g["params"][0].shape): g["lr_scale"] for g in opt.optimizers[0].param_groups}
    assert scale == pytest.approx(
        {(16, 48): 2 * math.sqrt(3), (16, 16): 2.0, (16, 64): 4.0, (64, 16): 1.0}
    )


# ----------------------------------------------------------------------------- resume


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shakespeare_path) -> dict[str, str]:
    return make_corpus(tmp_path_factory.mktemp("corpus"), shakespeare_path)


@pytest.mark.parametrize(
    "flags",
    [
        {"optimizer": "muon", "schedule": "wsd", "decay_ratio": 0.5},
        {"optimizer": "sgd", "schedule": "linear", "lr": 0.1, "min_lr": 0.01},
    ],
)
def test_resume_is_bitwise_exact_with_each_optimizer(corpus, tmp_path, flags):
    """8 steps straight == 4 steps, stop, --resume 4 more: Muon's momentum and both AdamW
    moments (one state dict of two optimizers), SGD's momentum."""
    common = dict(max_steps=8, eval_interval=4, **flags)
    train(tiny_config(corpus, tmp_path / "a", **common))
    train(tiny_config(corpus, tmp_path / "b", stop_at=4, **common))
    train(tiny_config(corpus, tmp_path / "b", resume="true", **common))
    a = load_checkpoint(tmp_path / "a" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    losses = [[r.get("loss") for r in c["metrics"] if r["kind"] == "train"] for c in (a, b)]
    assert losses[0] == losses[1] and len(losses[0]) == 8


def test_resume_refuses_another_optimizer_and_takes_a_given_muon_lr(corpus, tmp_path):
    train(tiny_config(corpus, tmp_path, max_steps=4, stop_at=2, optimizer="muon"))
    with pytest.raises(MyGPT2Error, match="trained with --optimizer muon; it cannot resume"):
        train(tiny_config(corpus, tmp_path, max_steps=4, resume="true", optimizer="adamw"))
    train(tiny_config(corpus, tmp_path, max_steps=4, resume="true", muon_lr=0.05))
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    muon_groups = ckpt["optimizer"]["optimizers"][0]["param_groups"]
    cfg = Config.from_saved(ckpt["config"])
    assert cfg.train.optimizer == "muon" and cfg.train.muon_lr == 0.05
    square = [g for g in muon_groups if g["lr_scale"] == pytest.approx(0.05 / 3e-3)]
    assert len(square) == 1  # the attention's c_proj (32 x 32): no shape factor
    assert square[0]["lr"] == pytest.approx(0.05 / 3e-3 * get_lr(3, cfg))  # the last step's


def test_a_torch_without_muon_resumes_adamw_and_refuses_muon_naming_the_version(
    corpus, tmp_path, monkeypatch, capsys
):
    """torch.optim.Muon arrived in torch 2.9; the package allows older torch. On one without
    it, an AdamW run starts and resumes as ever, and a Muon request is one line, up front."""
    train(tiny_config(corpus, tmp_path / "a", max_steps=4, stop_at=2))
    monkeypatch.delattr(torch.optim, "Muon")
    resumed = train(tiny_config(corpus, tmp_path / "a", max_steps=4, resume="true"))
    assert resumed["step"] == 4
    cfg = tiny_config(corpus, tmp_path / "b", max_steps=4, optimizer="muon")
    capsys.readouterr()
    with pytest.raises(MyGPT2Error) as caught:
        train(cfg)
    message = str(caught.value)
    assert "--optimizer muon needs torch 2.9 or later" in message
    assert f"this is torch {torch.__version__}" in message and "\n" not in message
    assert "[model]" not in capsys.readouterr().out  # refused before the config is printed
    with pytest.raises(MyGPT2Error, match=r"needs torch 2\.9"):
        make_optimizer(
            GPT(ModelConfig(n_layers=1, n_heads=1, n_emb=8, T=8, vocab_size=16)),
            cfg,
            torch.device("cpu"),
        )


# ------------------------------------------------------------- defaults and boundaries (#22)


def test_fractional_warmup_and_decay_lengths_round_as_documented():
    """Warmup lasts int(warmup_ratio * max_steps) steps (rounded down), wsd's decay
    round(decay_ratio * max_steps) steps (to nearest): with 15 steps and ratio 0.1 the warmup
    is 1 step (not 2), with 10 steps and decay_ratio 0.36 the decay is 4 steps (not 3)."""
    cfg = schedule_config("cosine", max_steps=15, warmup_ratio=0.1, min_lr=0.0)
    assert get_lr(0, cfg) == 1.0  # the one warmup step reaches the peak
    assert get_lr(1, cfg) == pytest.approx(1.0)  # cosine from step 1: progress 0
    assert get_lr(8, cfg) == pytest.approx(0.5)  # progress 7 / 14: the midpoint
    wsd = schedule_config("wsd", max_steps=10, warmup_ratio=0.0, decay_ratio=0.36, min_lr=0.0)
    assert [get_lr(s, wsd) for s in range(11)] == pytest.approx(
        [1.0] * 7 + [0.75, 0.5, 0.25, 0.0]
    )  # the decay starts at 10 - 4 = 6


@pytest.mark.parametrize("weight_decay", [0.1, 0.0])
@pytest.mark.parametrize("nesterov", [True, False])
def test_batched_muon_step_equals_torchs_muon(nesterov, weight_decay):
    """`muon_step` stacks same-shaped matrices (in the wide orientation, across groups): after
    five steps on the same gradients its parameters and momentum buffers equal torch's own
    Muon.step's bit for bit, for wide, tall and square matrices, a tall group stacked with a
    wide one of another rate, with weight decay (or none: its pass is skipped) and the
    shape-adjusted rate."""
    from mygpt2.optim import muon_class

    muon = muon_class()
    if muon is None:
        pytest.skip("this torch has no torch.optim.Muon")
    assert issubclass(muon, torch.optim.Muon) and muon is not torch.optim.Muon
    torch.manual_seed(0)
    shapes = [(16, 48), (16, 48), (64, 16), (64, 16), (64, 16), (32, 32), (48, 16), (48, 16)]
    start = [torch.randn(s) for s in shapes]
    ours = [t.clone().requires_grad_() for t in start]
    theirs = [t.clone().requires_grad_() for t in start]

    def groups(ps):
        by = {}
        for p in ps:
            by.setdefault(tuple(p.shape), []).append(p)
        return [{"params": g, "lr": 0.05 * (i + 1)} for i, g in enumerate(by.values())]

    kw = dict(lr=0.05, weight_decay=weight_decay, momentum=0.9, nesterov=nesterov)
    opt_ours, opt_theirs = muon(groups(ours), **kw), torch.optim.Muon(groups(theirs), **kw)
    hooked = []
    opt_ours.register_step_post_hook(lambda *_: hooked.append(1))  # torch's step machinery
    for _ in range(5):
        grads = [torch.randn(s) for s in shapes]
        for p, q, g in zip(ours, theirs, grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        opt_ours.step()
        opt_theirs.step()
    for p, q in zip(ours, theirs, strict=True):
        assert torch.equal(p, q)
        assert torch.equal(
            opt_ours.state[p]["momentum_buffer"], opt_theirs.state[q]["momentum_buffer"]
        )
    assert opt_ours.state_dict().keys() == opt_theirs.state_dict().keys()
    assert len(hooked) == 5  # the hooks and the profiler label of Optimizer.step still run


def test_batched_muon_falls_back_to_torchs_step_without_its_internals(monkeypatch):
    """On a torch whose Muon lacks the private pieces `muon_step` uses, the subclass runs
    torch's own step: the same parameters, bit for bit."""
    import mygpt2.optim
    from mygpt2.optim import muon_class

    if muon_class() is None:
        pytest.skip("this torch has no torch.optim.Muon")
    monkeypatch.setattr(mygpt2.optim, "_has_muon_internals", lambda: False)
    torch.manual_seed(3)
    start = torch.randn(8, 24)
    ours, theirs = start.clone().requires_grad_(), start.clone().requires_grad_()
    opt_ours = muon_class()([ours], lr=0.05, weight_decay=0.1)
    opt_theirs = torch.optim.Muon([theirs], lr=0.05, weight_decay=0.1)
    for _ in range(3):
        g = torch.randn(8, 24)
        ours.grad, theirs.grad = g.clone(), g.clone()
        opt_ours.step()
        opt_theirs.step()
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize(
    ("base", "options"),
    [
        (torch.optim.AdamW, {"fused": True}),
        (torch.optim.AdamW, {"fused": False}),
        (torch.optim.SGD, {"momentum": 0.9, "nesterov": True}),
    ],
)
def test_an_optimizer_without_dynamo_steps_and_saves_as_torchs(base, options):
    from mygpt2.optim import without_dynamo

    torch.manual_seed(0)
    start = [torch.randn(6, 4), torch.randn(4)]
    grads = [[torch.randn_like(p) for p in start] for _ in range(3)]
    runs = []
    for cls in (base, without_dynamo(base)):
        params = [torch.nn.Parameter(p.clone()) for p in start]
        opt = cls(
            [{"params": params[:1], "weight_decay": 0.1}, {"params": params[1:]}],
            lr=0.01,
            **options,
        )
        for step_grads in grads:
            for p, g in zip(params, step_grads, strict=True):
                p.grad = g.clone()
            opt.step()
            opt.zero_grad()
        assert all(p.grad is None for p in params)
        runs.append((params, opt.state_dict()))
    (ours, our_state), (theirs, their_state) = runs[1], runs[0]
    assert without_dynamo(base).__name__ == base.__name__  # logs and profiler labels as before
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))  # bit for bit
    assert our_state["param_groups"] == their_state["param_groups"]
    for k, saved in their_state["state"].items():
        for name, value in saved.items():
            assert torch.equal(torch.as_tensor(our_state["state"][k][name]), torch.as_tensor(value))


def test_training_never_imports_torch_dynamo(tmp_path):
    """Constructing, stepping and saving a torch optimizer imports torch._dynamo (0.8 s);
    mygpt2's optimizers (`optim.without_dynamo`) do none of it, with every optimizer."""
    import subprocess
    import sys

    script = (
        "import sys, torch\n"
        "from mygpt2.config import Config, ModelConfig\n"
        "from mygpt2.model import GPT\n"
        "from mygpt2.optim import make_optimizer\n"
        "for name in ('adamw', 'muon', 'sgd'):\n"
        "    cfg = Config()\n"
        "    cfg.model = ModelConfig(n_layers=2, n_heads=2, n_emb=16, T=8, vocab_size=40)\n"
        "    cfg.train.optimizer = name\n"
        "    model = GPT(cfg.model)\n"
        "    opt = make_optimizer(model, cfg, torch.device('cpu'))\n"
        "    x = torch.randint(0, 40, (2, 8))\n"
        "    model(x, x)[1].backward()\n"
        "    opt.step(); opt.zero_grad(); opt.load_state_dict(opt.state_dict())\n"
        "print(sorted(m for m in sys.modules if m.startswith('torch._dynamo'))[:3])\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
