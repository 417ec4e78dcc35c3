"""Checkpoint series (`mygpt2.dynamics.series`) and the metrics measured across them
(`mygpt2.dynamics.metrics`): snapshots at the right steps, loadable by us and by safetensors
itself, kept through a resume, a full disk survived; induction and previous-token scores of a
hand-built induction circuit and of a random model; the text metrics by hand."""

from __future__ import annotations

import errno
import json
import math
import sys

import pytest
import torch
from models import tiny_gpt
from safetensors import safe_open
from safetensors.torch import load_file
from test_train import make_corpus, tiny_config
from torch.nn import functional as F

from mygpt2.checkpoint import load_checkpoint
from mygpt2.cli import main
from mygpt2.config import ModelConfig
from mygpt2.dynamics.metrics import (
    ContextTooShortError,
    icl_score,
    induction_score,
    lens_loss,
    measure,
    prev_token_score,
    random_tokens,
    val_loss,
)
from mygpt2.dynamics.series import list_snapshots, load_snapshot, snapshot_due
from mygpt2.errors import MyGPT2Error
from mygpt2.fileio import fault
from mygpt2.model import GPT
from mygpt2.train import train


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shakespeare_path) -> dict[str, str]:
    return make_corpus(tmp_path_factory.mktemp("corpus"), shakespeare_path)


def steps_in(out_dir) -> list[int]:
    return sorted(
        int(p.stem.split("_")[1]) for p in (out_dir / "checkpoints").glob("*.safetensors")
    )


# ----------------------------------------------------------------------------- snapshots
def test_log_spacing_and_every_evaluation():
    due = [s for s in range(1, 41) if snapshot_due("log", s, s % 10 == 0, False)]
    assert due == [1, 2, 4, 8, 10, 16, 20, 30, 32, 40]
    assert [s for s in range(1, 41) if snapshot_due("all", s, False, s % 15 == 0)] == [15, 30]
    assert not any(snapshot_due("none", s, True, True) for s in range(1, 41))


def test_a_log_series_is_written_at_the_right_steps_and_loads(corpus, tmp_path):
    out = tmp_path / "run"
    result = train(tiny_config(corpus, out, max_steps=12, eval_interval=5, keep_checkpoints="log"))
    assert steps_in(out) == [1, 2, 4, 5, 8, 10, 12]
    evals = {r["step"]: r["val_loss"] for r in result["history"] if r["kind"] == "eval"}
    snapshots = list_snapshots(out)
    assert [s.step for s in snapshots] == [1, 2, 4, 5, 8, 10, 12]
    for snap in snapshots:
        assert snap.tokens == snap.step * 8 * 32  # macro_batch_size * T
        assert snap.val_loss == (pytest.approx(evals[snap.step]) if snap.step in evals else None)
    # the last snapshot holds the final weights, as checkpoint.pt does
    final = load_snapshot(snapshots[-1])
    weights = load_checkpoint(out / "checkpoint.pt")["model"]
    for key, value in final.state_dict().items():
        assert torch.equal(value, weights[key]), key
    # and safetensors reads it without mygpt2: plain tensors, metadata as strings
    path = str(snapshots[-1].path)
    plain = load_file(path)
    assert torch.equal(plain["transformer.wte.weight"], weights["transformer.wte.weight"])
    assert "lm_head.weight" not in plain  # tied: stored once
    with safe_open(path, framework="pt") as fh:
        meta = fh.metadata()
    assert meta["step"] == "12" and json.loads(meta["config"])["model"]["n_emb"] == 32
    assert float(meta["val_loss"]) == pytest.approx(evals[12])


def test_all_keeps_a_snapshot_at_every_save(corpus, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(corpus, out, max_steps=6, eval_interval=4, keep_checkpoints="all"))
    assert steps_in(out) == [4, 6]


def rows_of(out_dir, kind: str) -> list[dict]:
    lines = (out_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_resume_continues_the_series_and_health_and_a_new_run_replaces_them(corpus, tmp_path):
    common = dict(max_steps=9, eval_interval=3, keep_checkpoints="log", health_interval=4)
    train(tiny_config(corpus, tmp_path / "a", **common))
    train(tiny_config(corpus, tmp_path / "b", stop_at=5, **common))
    assert steps_in(tmp_path / "b") == [1, 2, 3, 4]
    train(tiny_config(corpus, tmp_path / "b", resume="true", **common))
    assert steps_in(tmp_path / "b") == steps_in(tmp_path / "a") == [1, 2, 3, 4, 6, 8, 9]
    for a, b in zip(list_snapshots(tmp_path / "a"), list_snapshots(tmp_path / "b"), strict=True):
        assert a.val_loss == b.val_loss and a.tokens == b.tokens
        wa, wb = load_file(str(a.path)), load_file(str(b.path))
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
    straight, resumed = rows_of(tmp_path / "a", "health"), rows_of(tmp_path / "b", "health")
    assert [r["step"] for r in resumed] == [4, 8]
    assert resumed == straight  # the resumed run is exact, and so are its statistics
    # a new run over it (--overwrite) starts a new series: no step of the old one stays
    new = dict(max_steps=2, eval_interval=2, keep_checkpoints="log", overwrite="true")
    train(tiny_config(corpus, tmp_path / "b", **new))
    assert steps_in(tmp_path / "b") == [1, 2]


def test_a_full_disk_warns_once_and_training_goes_on(corpus, tmp_path, monkeypatch, capsys):
    def full(path, write):
        raise fault(OSError(errno.ENOSPC, "No space left on device"), path, "write")

    monkeypatch.setattr(sys.modules["mygpt2.dynamics.series"], "atomic_write", full)
    out = tmp_path / "run"
    result = train(tiny_config(corpus, out, max_steps=8, eval_interval=4, keep_checkpoints="log"))
    printed = capsys.readouterr().out
    assert printed.count("warning: snapshot") == 1
    assert "snapshot at step 1 not kept" in printed and "the disk is full" in printed
    assert result["step"] == 8 and load_checkpoint(out / "checkpoint.pt")["step"] == 8
    assert steps_in(out) == []


def test_inspect_series_without_snapshots_says_how_to_make_them(tmp_path, capsys):
    with pytest.raises(MyGPT2Error, match="--keep_checkpoints log"):
        list_snapshots(tmp_path)
    assert main(["inspect", "series", "--out_dir", str(tmp_path)]) == 2
    assert "--keep_checkpoints log" in capsys.readouterr().err


def test_inspect_series_measures_every_snapshot_and_skips_what_t_cannot_hold(
    corpus, tmp_path, capsys
):
    out = tmp_path / "run"
    train(tiny_config(corpus, out, max_steps=4, eval_interval=4, keep_checkpoints="log"))
    capsys.readouterr()
    argv = ["inspect", "series", "--out_dir", str(out), "--metric", "icl,val_loss,induction"]
    assert main([*argv, "--windows", "3"]) in (0, None)
    printed = capsys.readouterr().out
    assert "note: skipping icl: icl compares the loss at token 500" in printed
    assert "this model's T is 32" in printed
    assert "3 snapshots" in printed and "val_loss:" in printed and "induction:" in printed
    assert "random tokens are drawn from the " in printed  # the text's tokens, not all 320
    for name in ("val_loss", "induction"):
        assert (out / f"series_{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / "series_icl.png").exists()


def test_without_the_runs_text_random_tokens_come_from_the_whole_vocabulary(
    corpus, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"
    train(tiny_config(corpus, out, max_steps=2, eval_interval=2, keep_checkpoints="log"))
    capsys.readouterr()

    def gone(*args, **kwargs):
        raise MyGPT2Error("the tokenizer 'tok.json' is gone")

    monkeypatch.setattr("mygpt2.dynamics.series.text_windows", gone)
    argv = ["inspect", "series", "--out_dir", str(out), "--metric", "induction"]
    assert main(argv) in (0, None)
    printed = capsys.readouterr().out
    assert "note: random tokens come from the whole vocabulary: the tokenizer" in printed
    assert (out / "series_induction.png").is_file()
    assert main([*argv[:-1], "val_loss"]) == 2  # a text metric cannot do without it
    assert "the tokenizer 'tok.json' is gone" in capsys.readouterr().err


# ----------------------------------------------------------------------------- metrics
def induction_circuit(V: int = 16, T: int = 32, gain: float = 12.0) -> GPT:
    """Two one-head layers set by hand. The residual stream holds [token one-hot | position
    one-hot | previous token]. Layer 0's query at position i matches the key of position i - 1
    and copies that token into the 'previous token' part; layer 1's query (its own token)
    matches keys whose previous token is the same: the position after the token's earlier
    occurrence. MLPs are zero."""
    C = 2 * V + T
    model = GPT(ModelConfig(n_layers=2, n_heads=1, n_emb=C, T=T, vocab_size=V))
    tok, pos, prev = slice(0, V), slice(V, V + T), slice(V + T, C)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        blocks = model.transformer.h
        for ln in [model.transformer.ln_f, *(m for b in blocks for m in (b.ln_1, b.ln_2))]:
            ln.weight.fill_(1.0)
        model.transformer.wte.weight[:, tok] = torch.eye(V)
        model.transformer.wpe.weight[:, pos] = torch.eye(T)
        q, k, v = (blocks[0].attn.c_attn.weight[:, i * C : (i + 1) * C] for i in range(3))
        q[pos, pos] = gain * torch.eye(T)  # position i asks for e_i
        k[pos, pos] = gain * torch.eye(T).roll(1, dims=1)  # position j offers e_(j+1)
        v[tok, tok] = torch.eye(V)
        blocks[0].attn.c_proj.weight[tok, prev] = 4 * torch.eye(V)
        q, k, _ = (blocks[1].attn.c_attn.weight[:, i * C : (i + 1) * C] for i in range(3))
        q[tok, tok] = gain * torch.eye(V)
        k[prev, tok] = gain * torch.eye(V)
    return model.eval()


def test_a_hand_built_induction_head_scores_one_and_a_random_model_chance():
    model = induction_circuit()
    scores = induction_score(model, half=16)
    assert scores[1, 0] > 0.95  # layer 1's head copies from after the earlier occurrence
    assert scores[0, 0] < 0.05
    prev = prev_token_score(model)
    assert prev[0, 0] > 0.99 and prev[1, 0] < 0.2  # layer 0's head reads the token before

    random = tiny_gpt(seed=3)  # T = 24: half = 12
    half = 12
    chance = sum(1 / (q + 1) for q in range(half, 2 * half)) / half
    assert induction_score(random) == pytest.approx(torch.full((2, 2), chance), abs=0.01)
    chance_prev = sum(1 / (q + 1) for q in range(1, 24)) / 23
    assert prev_token_score(random) == pytest.approx(torch.full((2, 2), chance_prev), abs=0.01)


def test_random_tokens_come_from_the_text_when_it_is_given():
    # tokens 8..15 never occur in "training": their embeddings stay zero, as an unused byte's
    # would stay near its initialisation, and the circuit cannot tell their copies apart
    model = induction_circuit()
    with torch.no_grad():
        model.transformer.wte.weight[8:] = 0.0
    windows = torch.tensor([[3, 1, 4, 1, 5, 2, 6, 5, 3, 5], [0, 7, 2, 7, 1, 0, 3, 6, 4, 2]])
    drawn = random_tokens(16, 4, 6, pool=windows)
    assert set(drawn.flatten().tolist()) <= set(range(8))
    assert all(len(set(row.tolist())) == 6 for row in drawn)  # no repeats within a row

    whole = induction_score(model, half=8)
    from_text = measure(model, "induction", windows).view(2, 1)
    assert from_text[1, 0] > 0.9  # half shrinks to the 8 ids in the text
    assert from_text[1, 0] > whole[1, 0] + 0.2  # the unseen tokens drag the score down
    assert torch.equal(from_text, induction_score(model, half=50, pool=windows))
    assert measure(model, "prev_token", windows)[0] > 0.99


def test_text_metrics_by_hand():
    model = tiny_gpt(seed=1)  # T = 24, vocab 61
    g = torch.Generator().manual_seed(0)
    windows = torch.randint(0, 61, (5, 25), generator=g)
    logits, _ = model(windows[:, :-1])
    by_hand = F.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten())
    assert val_loss(model, windows, batch=2).item() == pytest.approx(by_hand.item(), rel=1e-5)
    lens = lens_loss(model, windows, batch=2)
    assert lens.shape == (2,) and lens[-1].item() == pytest.approx(by_hand.item(), rel=1e-5)
    with pytest.raises(ContextTooShortError, match="needs T of at least 500"):
        icl_score(model, windows)

    long = tiny_gpt(seed=2, n_layers=1, n_emb=16, T=500, vocab_size=50)
    text = torch.randint(0, 50, (2, 501), generator=g)
    logits, _ = long(text[:, :500])
    losses = F.cross_entropy(logits.transpose(1, 2), text[:, 1:501], reduction="none")
    expected = losses[:, 499].mean() - losses[:, 49].mean()  # tokens 500 and 50
    assert icl_score(long, text).item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)
    assert math.isfinite(icl_score(long, text).item())


# ------------------------------------------------------------- defaults and boundaries (#22)


def test_a_non_finite_or_missing_loss_reads_back_as_none(tmp_path):
    from mygpt2.config import Config
    from mygpt2.dynamics.series import read_snapshot, snapshot_path, write_snapshot

    model = tiny_gpt()
    cfg = Config()
    cfg.model = model.config
    info = {"config": cfg.to_dict(), "tokenizer": {}, "tokens": 96, "train_loss": 4.5}
    for step, val in ((1, float("nan")), (2, float("inf")), (3, None), (4, 3.25)):
        path = snapshot_path(tmp_path, step)
        write_snapshot(path, model, {"step": step, "val_loss": val, **info})
        snap = read_snapshot(path)
        assert (snap.step, snap.tokens, snap.train_loss) == (step, 96, 4.5)
        assert snap.val_loss == (3.25 if step == 4 else None)
    assert path.name == "step_0000004.safetensors"
    assert [s.step for s in list_snapshots(tmp_path)] == [1, 2, 3, 4]


def test_text_windows_by_hand(monkeypatch):
    """Windows of T + 1 tokens, evenly spaced from the first token to the last; a split of
    exactly T + 1 tokens is one window, a shorter one is refused, and so is a tokenizer other
    than the series'."""
    import numpy as np

    import mygpt2.prepare
    import mygpt2.tokenizer
    from mygpt2.config import Config
    from mygpt2.dynamics.series import Snapshot, text_windows

    class Tok:
        def fingerprint(self):
            return "f" * 64

    val = {"tokens": np.arange(100, dtype=np.uint16)}
    monkeypatch.setattr(mygpt2.tokenizer, "load_tokenizer", lambda cfg: Tok())
    monkeypatch.setattr(
        mygpt2.prepare, "ensure_prepared", lambda cfg, tok, progress: (None, val["tokens"], {})
    )
    cfg = Config()
    cfg.model.T = 9
    snap = Snapshot(None, 1, 0, None, None, cfg, {"name": "t", "fingerprint": "f" * 64})
    windows = text_windows(snap, count=4)  # starts 0, 30, 60, 90: the last ends at token 99
    assert windows.dtype == torch.int64
    assert windows.tolist() == [list(range(s, s + 10)) for s in (0, 30, 60, 90)]
    val["tokens"] = np.arange(10, dtype=np.uint16)
    assert text_windows(snap, count=4).tolist() == [list(range(10))]
    val["tokens"] = np.arange(9, dtype=np.uint16)
    with pytest.raises(MyGPT2Error, match=r"9 tokens, fewer than one window of T \+ 1 = 10"):
        text_windows(snap)
    snap.tokenizer["fingerprint"] = "0" * 64
    with pytest.raises(MyGPT2Error, match="now holds another"):
        text_windows(snap)


def test_log_spacing_starts_at_step_1():
    """Powers of two from 1: step 0 (before any training) is no snapshot of its own."""
    assert [s for s in range(0, 9) if snapshot_due("log", s, False, False)] == [1, 2, 4, 8]
    assert snapshot_due("log", 0, True, False)  # unless it is evaluated


def test_all_keeps_every_save_and_every_evaluation():
    """`all`: a snapshot at every save of checkpoint.pt and at every evaluation, even one
    that saves nothing; `none` keeps nothing, whatever happened at the step."""
    assert snapshot_due("all", 7, True, False) and snapshot_due("all", 7, False, True)
    assert not snapshot_due("all", 8, False, False)  # a power of two is no reason here
    assert not snapshot_due("none", 8, True, True)


def test_a_pool_of_exactly_length_ids_gives_permutations():
    """No repeats within a row whenever the pool holds enough ids, exactly `length` included;
    with fewer, ids repeat (there is no other way), all from the pool."""
    pool = torch.tensor([[7, 3, 9], [3, 1, 0], [9, 7, 5]])  # 6 distinct ids
    rows = random_tokens(50, 4, 6, pool=pool)
    assert all(sorted(row.tolist()) == [0, 1, 3, 5, 7, 9] for row in rows)
    rows = random_tokens(50, 4, 7, pool=pool)
    assert set(rows.flatten().tolist()) <= {0, 1, 3, 5, 7, 9} and rows.shape == (4, 7)
