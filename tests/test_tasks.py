"""Multiple-choice scoring's three pickers, each under its own name: `acc` (sum of
log-probabilities), `acc_norm` (per character of the ending, lm-evaluation-harness's), and
`acc_per_token` (per token, llm.c's HellaSwag). Hand-computed cases where they disagree, ties
(the first ending wins, as `numpy.argmax`), a model scored against its own forward, and old
metrics files whose `acc_norm/` rows were per token."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from models import tiny_gpt

from mygpt2.evaluation.tasks import Item, Task, _count, first_best, score_task
from mygpt2.tokenizer import RegexTokenizer


def hand_task(items: list[tuple[list[str], int]]) -> Task:
    return Task("hand", Path("hand.jsonl"), [Item("ctx", e, label, n + 1) for n, (e, label) in
                                            enumerate(items)])  # fmt: skip


def count(items: list[tuple[list[str], int]], tokens: list[int], logprob: list[float]):
    """`_count` on hand-made scores: ending j of the flattened list has `tokens[j]` tokens
    and a summed log-probability of `logprob[j]` (the rows' token lists are not read)."""
    rows = [([0] * (n + 1), n) for n in tokens]
    return _count(hand_task(items), rows, [-lp for lp in logprob], set(), 0.0)


def test_per_character_and_per_token_pick_different_endings():
    """Ending 0: "wxyz", 4 characters, 1 token, log-probability -2.0.
    Ending 1: "abc", 3 characters, 3 tokens, log-probability -3.0.
      sum:       -2.0 > -3.0                 -> ending 0
      per char:  -2/4 = -0.5 > -3/3 = -1.0   -> ending 0 (lm-eval's acc_norm)
      per token: -2/1 = -2.0 < -3/3 = -1.0   -> ending 1 (llm.c's)
    The right answer is ending 1: acc 0, acc_norm 0, acc_per_token 1."""
    score = count([(["wxyz", "abc"], 1)], tokens=[1, 3], logprob=[-2.0, -3.0])
    p = score.predictions[0]
    assert (p["pred"], p["pred_norm"], p["pred_per_token"]) == (0, 0, 1)
    assert p["logprob_per_char"] == [-0.5, -1.0] and p["logprob_per_token"] == [-2.0, -1.0]
    assert (p["ending_chars"], p["ending_tokens"]) == ([4, 3], [1, 3])
    assert (score.acc, score.acc_norm, score.acc_per_token) == (0.0, 0.0, 1.0)


def test_the_length_normalised_pickers_overrule_the_sum():
    """Ending 0: "ab", 2 characters, 2 tokens, -3.0; ending 1: "abcdefgh", 8 characters,
    3 tokens, -4.0. Sum: 0. Per char: -1.5 against -0.5: 1. Per token: -1.5 against -4/3: 1."""
    score = count([(["ab", "abcdefgh"], 1)], tokens=[2, 3], logprob=[-3.0, -4.0])
    p = score.predictions[0]
    assert (p["pred"], p["pred_norm"], p["pred_per_token"]) == (0, 1, 1)
    assert (score.acc, score.acc_norm, score.acc_per_token) == (0.0, 1.0, 1.0)


def test_a_space_is_not_a_character_of_the_ending():
    """lm-eval divides by len(choice), the ending without the " " put in front of it: "ab"
    counts 2. Ending 0 "ab" (-2.2, per char -1.1) against ending 1 "abcd" (-4.0, per char
    -1.0) picks 1; counting the space (-2.2/3 = -0.733 against -4/5 = -0.8) would pick 0."""
    score = count([(["ab", "abcd"], 1)], tokens=[3, 5], logprob=[-2.2, -4.0])
    assert score.predictions[0]["pred_norm"] == 1 and score.acc_norm == 1.0


def test_ties_go_to_the_first_ending():
    # every picker ties: the first ending is the prediction, right or wrong
    for label, expected in ((0, 1.0), (1, 0.0)):
        score = count([(["ab", "cd"], label)], tokens=[1, 1], logprob=[-2.0, -2.0])
        p = score.predictions[0]
        assert (p["pred"], p["pred_norm"], p["pred_per_token"]) == (0, 0, 0)
        assert (score.acc, score.acc_norm, score.acc_per_token) == (expected,) * 3
    # only the per-character scores tie (-4/4 = -2/2 = -1.0): it takes ending 0, where the
    # sum (-2.0 > -4.0) and per token (-2/2 = -1.0 > -4/1) take ending 1
    score = count([(["abcd", "ab"], 0)], tokens=[1, 2], logprob=[-4.0, -2.0])
    p = score.predictions[0]
    assert (p["pred"], p["pred_norm"], p["pred_per_token"]) == (1, 0, 1)
    assert (score.acc, score.acc_norm, score.acc_per_token) == (0.0, 1.0, 0.0)


def test_first_best():
    assert first_best([1.0, 3.0, 3.0, 2.0]) == 1
    assert first_best([-1.0]) == 0
    assert first_best([-5.0, -5.0, -5.0]) == 0


def test_a_model_scored_against_its_own_forward():
    """Byte-level tokens, a random tiny model: each ending's log-probability from one plain
    forward of context + " " + ending, then the three pickers by hand. The items are many and
    their endings of different lengths, so per-character and per-token picks do differ."""
    tok = RegexTokenizer(name="bytes")  # 256 bytes + end-of-text
    model = tiny_gpt(seed=5, vocab_size=tok.vocab_size, T=48)
    words = ["a", "to be", "or not", "the question", "is it", "nobler in the mind", "x y"]
    items = [
        Item(f"ctx {i} says", [words[i % 7], words[(i * 3 + 1) % 7], words[(i * 5 + 2) % 7]], 0, i)
        for i in range(14)
    ]
    task = Task("own", Path("own.jsonl"), items)
    score = score_task(model, tok, task, batch_size=2)
    differ = 0
    for item, p in zip(items, score.predictions, strict=True):
        ctx = tok.encode_ordinary(item.context)
        sums, per_char, per_token = [], [], []
        for ending in item.endings:
            end = tok.encode_ordinary(" " + ending)
            with torch.no_grad():
                logits, _ = model(torch.tensor([ctx + end]))
            logp = torch.log_softmax(logits[0, :-1].double(), dim=-1)
            targets = torch.tensor(ctx + end)[1:]
            total = logp.gather(1, targets[:, None])[-len(end) :].sum().item()
            sums.append(total)
            per_char.append(total / len(ending))
            per_token.append(total / len(end))
        assert p["logprob_sum"] == pytest.approx(sums, abs=1e-4)
        best = [max(range(3), key=v.__getitem__) for v in (sums, per_char, per_token)]
        assert [p["pred"], p["pred_norm"], p["pred_per_token"]] == best
        differ += best[1] != best[2]
    assert differ > 0  # the case this naming is about occurs among these items
    d = score.as_dict()
    assert d["acc_norm"] == score.correct_norm / 14
    assert d["acc_per_token"] == score.correct_per_token / 14
    assert d["acc_per_token_interval"][0] <= d["acc_per_token"] <= d["acc_per_token_interval"][1]


def test_old_metrics_files_with_per_token_acc_norm_rows_still_display(tmp_path):
    """Runs logged before `acc_per_token` existed have `acc_norm/NAME` rows only: the run
    comparison, the server's training view and the loss plot read them as before."""
    from mygpt2.compare import compare_runs, format_table
    from mygpt2.metrics import MetricsLog
    from mygpt2.serve.runs import read_metrics

    old = [
        {"kind": "train", "step": s, "loss": 4.0 - s / 10, "lr": 1e-3, "tokens": 64 * s}
        for s in range(1, 5)
    ]
    old += [
        {"kind": "eval", "step": s, "val_loss": 4.1 - s / 10, "acc/hs": 0.25, "acc_norm/hs": 0.3,
         "n/hs": 8}
        for s in (2, 4)
    ]  # fmt: skip
    run = tmp_path / "old"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    table = format_table(compare_runs([run]))
    assert "3.7000" in table  # the best validation loss
    got = read_metrics(str(run))
    assert [r.get("acc_norm/hs") for r in got["rows"] if r["kind"] == "eval"] == [0.3, 0.3]
    log = MetricsLog(tmp_path / "replot", history=old)
    log.plot(tokens_per_step=64)
    assert (tmp_path / "replot" / "loss_plot.png").stat().st_size > 0


# ------------------------------------------------------------- defaults and boundaries (#22)


def own_logprob(model, ids: list[int], n_end: int) -> float:
    """The summed log-probability of the last `n_end` of `ids`, by one plain forward."""
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids[:-1]]))
    logp = torch.log_softmax(logits[0].double(), dim=-1)
    return logp.gather(1, torch.tensor(ids[1:])[:, None])[-n_end:].sum().item()


def test_t_plus_one_tokens_fit_one_more_loses_the_first_and_an_empty_context_is_eot():
    """T = 8: a row of context + ending holds T + 1 = 9 tokens (the model sees 8 inputs).
    "abcd" + " efgh" is exactly 9 bytes: whole, not truncated; "abcde" + " efgh" is 10: its
    first byte goes, counted as truncated; an empty context is the end-of-text token."""
    tok = RegexTokenizer(name="bytes")
    model = tiny_gpt(seed=3, vocab_size=tok.vocab_size, T=8)
    items = [Item("abcd", ["efgh", "xy"], 0, 1), Item("abcde", ["efgh", "xy"], 0, 2)]
    items.append(Item("", ["ab", "xyz"], 0, 3))
    score = score_task(model, tok, Task("b", Path("b.jsonl"), items))
    flags = [p["truncated"] for p in score.predictions]
    assert flags == [False, True, False] and score.truncated == 1
    ids = [list(b" efgh"), list(b" xy")]
    exact, cut, empty = (p["logprob_sum"] for p in score.predictions)
    assert exact[0] == pytest.approx(own_logprob(model, list(b"abcd") + ids[0], 5), abs=1e-5)
    assert cut[0] == pytest.approx(own_logprob(model, list(b"bcde") + ids[0], 5), abs=1e-5)
    assert cut[1] == pytest.approx(own_logprob(model, list(b"abcde") + ids[1], 3), abs=1e-5)
    eot = [tok.eot_id]
    assert empty[0] == pytest.approx(own_logprob(model, eot + list(b" ab"), 3), abs=1e-5)
    assert empty[1] == pytest.approx(own_logprob(model, eot + list(b" xyz"), 4), abs=1e-5)


def test_max_items_reads_exactly_that_many(tmp_path):
    from mygpt2.evaluation.tasks import read_task

    item = {"context": "a", "choices": ["b", "c"], "answer": 1}
    path = tmp_path / "t.jsonl"
    path.write_text((json.dumps(item) + "\n") * 5, encoding="utf-8")
    assert [i.line for i in read_task(path, max_items=2).items] == [1, 2]
    assert len(read_task(path, max_items=5).items) == len(read_task(path).items) == 5
    assert len(read_task(path, max_items=9).items) == 5
