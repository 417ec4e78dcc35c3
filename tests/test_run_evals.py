"""Evaluations during training: validation bits per byte, eval_data and eval_tasks rows."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_train import make_corpus, tiny_args

from mygpt2.checkpoint import load_model_and_tokenizer
from mygpt2.cli import main as run_main
from mygpt2.commands.args import load_config
from mygpt2.corpus import open_corpus
from mygpt2.data import construct_data_loaders
from mygpt2.evaluation.during_training import RunEvals, validation_bpb
from mygpt2.evaluation.tasks import read_task, score_task
from mygpt2.evaluation.text import read_stream, score_stream
from mygpt2.loss import IGNORE_INDEX
from mygpt2.prepare import ensure_prepared
from mygpt2.tokenizer import RegexTokenizer
from mygpt2.train import train


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shakespeare_path) -> dict[str, str]:
    return make_corpus(tmp_path_factory.mktemp("corpus"), shakespeare_path)


def test_validation_bpb_by_hand():
    # ids 0..3 are one byte each, 4 is two bytes, 5 (a special token) none
    evals = RunEvals(
        tokenizer=RegexTokenizer(),
        token_bytes=torch.tensor([1, 1, 1, 1, 2, 0]),
        batch_size=2,
    )
    batches = [
        (None, torch.tensor([[0, 4, 5], [1, IGNORE_INDEX, IGNORE_INDEX]])),
        (None, torch.tensor([[4, 4, 3]])),
    ]
    # targets: 0,4,5,1 and 4,4,3 = 7 scored, bytes 1+2+0+1 + 2+2+1 = 9
    got = validation_bpb(evals, batches, 0.5)
    assert got == pytest.approx(0.5 * 7 / math.log(2) / 9, rel=1e-12)
    assert evals.val_counts == (7, 9)
    # counted once: the same batches at every evaluation
    assert validation_bpb(evals, [], 1.0) == pytest.approx(7 / math.log(2) / 9, rel=1e-12)


def write_task(path) -> None:
    items = [
        {"ctx": "ROMEO: I will", "endings": [" go.", " the the the", " xq zv"], "label": 0},
        {"ctx": "KING: My lord,", "endings": [" zzz", " I pray you.", " qqq qq"], "label": 1},
        {"context": "To be, or not", "choices": [" to be", " kx", " jjj"], "answer": 0},
    ]
    path.write_text("".join(json.dumps(i) + "\n" for i in items), encoding="utf-8")


def test_training_logs_bits_per_byte_eval_data_and_tasks(corpus, tmp_path, shakespeare_path):
    held_out = tmp_path / "held_out.txt"
    held_out.write_text(shakespeare_path.read_text(encoding="utf-8")[-20_000:], encoding="utf-8")
    task = tmp_path / "mini.jsonl"
    write_task(task)
    out = tmp_path / "run"
    argv = tiny_args(corpus, out, eval_data=held_out, eval_tasks=task, eval_stride=16, max_steps=4)
    cfg = load_config(argv)
    train(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if r["kind"] == "eval"][-1]
    assert last["step"] == 4

    # the final evaluation saw the checkpoint's weights: score them as `mygpt2 eval` does
    model, tok = load_model_and_tokenizer(load_config(["--out_dir", str(out)]))
    budget = cfg.train.eval_batches * cfg.train.batch_size * cfg.model.T
    data_cfg = load_config(["--data", str(held_out)]).data
    stream = read_stream(open_corpus(data_cfg), tok, max_tokens=budget)
    score = score_stream(model, stream, stride=16)
    assert last["eval_data_tokens"] == budget == score.tokens
    assert last["eval_data_loss"] == pytest.approx(score.loss, rel=1e-5)
    assert last["eval_data_bpb"] == pytest.approx(score.bits_per_byte, rel=1e-5)
    result = score_task(model, tok, read_task(task))
    assert last["acc/mini"] == pytest.approx(result.acc)
    assert last["acc_norm/mini"] == pytest.approx(result.acc_norm)
    assert last["acc_per_token/mini"] == pytest.approx(result.acc_per_token)
    assert last["n/mini"] == 3

    # val_bpb: the validation batches' targets and their bytes, counted here from the text
    train_tokens, val_tokens, _ = ensure_prepared(cfg, tok)
    _, val_loader = construct_data_loaders(cfg, train_tokens, val_tokens, 0)
    targets = nbytes = 0
    for _, y in val_loader:
        ids = [i for i in y.flatten().tolist() if i != IGNORE_INDEX]
        targets += len(ids)
        nbytes += sum(len(tok.decode_bytes([i])) for i in ids if i != tok.eot_id)
    expected = last["val_loss"] * targets / math.log(2) / nbytes
    assert last["val_bpb"] == pytest.approx(expected, rel=1e-9)
    assert (out / "loss_plot.png").stat().st_size > 0


def test_bad_eval_sources_fail_before_training(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    missing = tmp_path / "nope.jsonl"
    assert run_main(["train", *tiny_args(corpus, out, eval_tasks=missing)]) == 2
    assert f"task file '{missing}' does not exist" in capsys.readouterr().err
    assert not (out / "checkpoint.pt").exists()
    assert run_main(["train", *tiny_args(corpus, out, eval_stride=33)]) == 2
    assert "eval_stride must be between 1 and T = 32" in capsys.readouterr().err


# ------------------------------------------------------------- defaults and boundaries (#22)


def uniform_model(T: int = 16):
    """Every weight zero: the logits are all 0, each of the 257 byte-level ids has p = 1/257."""
    from mygpt2.config import ModelConfig
    from mygpt2.model import GPT

    model = GPT(ModelConfig(n_layers=1, n_heads=1, n_emb=8, T=T, vocab_size=257))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    return model.eval()


def test_eval_sources_defaults_and_budget_by_hand(tmp_path):
    """eval_stride 0 means T; val_batch_size 0 means batch_size; one validation pass is
    eval_batches x that many sequences: as many T-token windows of eval_data and as many items
    of each eval_tasks file (comma-separated, each read)."""
    from mygpt2.config import Config
    from mygpt2.evaluation.during_training import prepare_evals, score_extras

    text = tmp_path / "held_out.txt"
    text.write_text("abcdefghij" * 100, encoding="utf-8")  # 1000 one-byte tokens
    item = {"context": "ab", "choices": ["xyz", "q", "uv"], "answer": 1}
    for name in ("a", "b"):
        (tmp_path / f"{name}.jsonl").write_text((json.dumps(item) + "\n") * 8, encoding="utf-8")
    cfg = Config()
    cfg.model.T = 16
    t = cfg.train
    t.batch_size, t.eval_batches, t.eval_data = 3, 2, str(text)
    t.eval_tasks = f"{tmp_path / 'a.jsonl'}, {tmp_path / 'b.jsonl'}"
    assert (t.eval_stride, t.val_batch_size) == (0, 0)  # the defaults this test is about
    tok = RegexTokenizer()  # the 256 bytes and end-of-text
    evals = prepare_evals(cfg, tok)
    assert (evals.stride, evals.batch_size) == (16, 3)
    assert evals.stream.text_tokens == 2 * 3 * 16 and evals.stream.truncated
    assert [(task.name, len(task.items)) for task in evals.tasks] == [("a", 6), ("b", 6)]

    # a uniform model: every token costs ln 257 nats; per ending, the sum picks the shortest
    # (" q", 2 tokens: right), per character " xyz" (-4 ln 257 / 3 characters), per token
    # all tie and the first wins
    row = score_extras(evals, uniform_model(), torch.float32)
    assert row["eval_data_loss"] == pytest.approx(math.log(257), rel=1e-6)
    assert row["eval_data_bpb"] == pytest.approx(math.log2(257), rel=1e-6)
    assert row["eval_data_tokens"] == 96
    for name in ("a", "b"):
        assert (row[f"acc/{name}"], row[f"acc_norm/{name}"], row[f"acc_per_token/{name}"]) == (
            1.0,
            0.0,
            0.0,
        )
        assert row[f"n/{name}"] == 6

    t.val_batch_size, t.eval_stride = 2, 5
    evals = prepare_evals(cfg, tok)
    assert (evals.stride, evals.batch_size, evals.stream.text_tokens) == (5, 2, 64)
    assert [len(task.items) for task in evals.tasks] == [4, 4]
