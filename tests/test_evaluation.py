"""Evaluation (mygpt2.evaluation, mygpt2.evaluation.tasks, `mygpt2 eval`), held against `transformers`.

The reference scores come from a random-initialised Hugging Face GPT2LMHeadModel with GPT-2's
vocabulary, saved locally, and GPT-2's tokenizer from the shared tiktoken file: the windows
and the multiple-choice rows are built here by hand and scored by HF's own forward pass.
Task files are small files written by the tests; nothing is downloaded.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from models import hf_model, tiny_gpt

from mygpt2.checkpoint import save_checkpoint
from mygpt2.cli import main
from mygpt2.commands.args import load_config
from mygpt2.errors import MyGPT2Error
from mygpt2.evaluation.tasks import read_task, score_task, wilson_interval
from mygpt2.evaluation.text import score_stream, sliding_windows, text_stream
from mygpt2.hf import from_pretrained
from mygpt2.tokenizer import RegexTokenizer

T = 32
DOCS = [
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 3,
    "Café au lait, naïve façade: 日本語のテキスト 😀 and some more words to score here.\n" * 2,
]


@pytest.fixture(scope="module")
def gpt2_tok(gpt2_tiktoken_path) -> RegexTokenizer:
    return RegexTokenizer.from_tiktoken_file(gpt2_tiktoken_path, "gpt2", {"<|endoftext|>": 50256})


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    """A random GPT-2 with GPT-2's vocabulary and T = 32, saved as Hugging Face does."""
    directory = tmp_path_factory.mktemp("hf-gpt2")
    hf_model((2, 2, 32, T, 50257), seed=3).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def hf_ref(hf_dir):
    transformers = pytest.importorskip("transformers")
    return transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()


@pytest.fixture(scope="module")
def ckpt_path(tmp_path_factory) -> Path:
    """A tiny untrained checkpoint of ours (T = 64) with its own 300-token tokenizer."""
    root = tmp_path_factory.mktemp("eval-ckpt")
    tok = RegexTokenizer()
    tok.train("".join(DOCS) * 4, vocab_size=300)
    tok.save(root / "tokenizer.json")
    flags = ["--n_layers=1", "--n_heads=2", "--n_emb=32", "--T=64", "--vocab_size=300"]
    cfg = load_config([f"--tokenizer_path={root / 'tokenizer.json'}", *flags])
    model = tiny_gpt(seed=2, n_layers=1, n_heads=2, n_emb=32, T=64, vocab_size=300)
    state = {"name": tok.name, "fingerprint": tok.fingerprint()}
    save_checkpoint(
        root / "checkpoint.pt",
        {"model": model.state_dict(), "config": cfg.to_dict(), "tokenizer": state},
    )
    return root / "checkpoint.pt"


def hf_logprobs(hf, ids: list[int]) -> torch.Tensor:
    """log p(ids[i + 1] | ids[: i + 1]) for each i, by HF's forward pass."""
    with torch.no_grad():
        logits = hf(torch.tensor([ids[:-1]])).logits[0].double()
    return logits.log_softmax(-1).gather(1, torch.tensor(ids[1:])[:, None]).squeeze(1)


# ----------------------------------------------------------------------------- windows


def test_windows_by_hand():
    assert sliding_windows(7, 4, 2) == [(0, 4, 4), (2, 6, 2), (3, 7, 1)]
    assert sliding_windows(8, 4, 4) == [(0, 4, 4), (4, 8, 4)]
    assert sliding_windows(3, 4, 2) == [(0, 3, 3)]
    assert sliding_windows(0, 4, 2) == []


@pytest.mark.parametrize("n", [1, 5, 31, 32, 33, 100])
@pytest.mark.parametrize("stride", [1, 7, 16, 32])
def test_windows_score_each_target_once_with_enough_context(n, stride):
    seen = []
    for w in sliding_windows(n, T, stride):
        assert w.start >= 0 and w.end - w.start == min(T, n) and 1 <= w.scored <= w.end - w.start
        for target in range(w.end - w.scored + 1, w.end + 1):  # stream positions
            seen.append(target)
            assert target - w.start >= min(target, T - stride + 1)  # tokens before it, seen
    assert seen == list(range(1, n + 1))


@pytest.mark.parametrize("stride", [0, -1, T + 1])
def test_stride_out_of_range_is_refused(stride):
    with pytest.raises(MyGPT2Error, match=f"stride must be between 1 and the context length T={T}"):
        sliding_windows(10, T, stride)


# ----------------------------------------------------------------------------- text metrics


@pytest.mark.parametrize("stride", [T, 10])
def test_loss_equals_hf_on_the_same_windows(
    hf_dir, hf_ref, gpt2_tok, gpt2_tiktoken_path, tmp_path, stride
):
    """The command's loss against the same windows built by hand and scored by transformers:
    end-of-text before each document, windows crossing documents, separators not scored."""
    data = tmp_path / "docs"
    data.mkdir()
    for i, doc in enumerate(DOCS):
        (data / f"{i}.txt").write_text(doc, encoding="utf-8")
    out = tmp_path / "r.json"
    argv = ["eval", str(hf_dir), f"--data={data}", f"--stride={stride}", "--batch_size=3"]
    assert main([*argv, f"--tiktoken_file={gpt2_tiktoken_path}", f"--json={out}"]) == 0
    got = json.loads(out.read_text(encoding="utf-8"))["models"][0]

    eot = gpt2_tok.eot_id
    stream = [t for doc in DOCS for t in [eot, *gpt2_tok.encode_ordinary(doc)]]
    nats, count, end = 0.0, 0, 0
    while end < len(stream) - 1:  # the HF perplexity guide's loop, one target per token
        new_end = min(end + stride, len(stream) - 1) if end else min(T, len(stream) - 1)
        begin = max(0, new_end - T)
        logp = hf_logprobs(hf_ref, stream[begin : new_end + 1])
        targets = torch.tensor(stream[begin + 1 : new_end + 1])
        keep = (torch.arange(len(targets)) >= end - begin) & (targets != eot)
        nats -= logp[keep].sum().item()
        count += int(keep.sum())
        end = new_end
    text_bytes = sum(len(doc.encode("utf-8")) for doc in DOCS)
    assert got["tokens"] == count == len(stream) - len(DOCS)
    assert got["bytes"] == text_bytes
    assert abs(got["loss"] - nats / count) < 1e-5
    assert got["perplexity"] == pytest.approx(math.exp(got["loss"]))
    assert got["bits_per_byte"] == pytest.approx(got["loss"] * count / math.log(2) / text_bytes)
    assert got["tokens_per_byte"] == pytest.approx(count / text_bytes)


def test_disjoint_windows_equal_the_models_own_loss(hf_dir, gpt2_tok):
    """stride = T against GPT.forward(reduction="sum") on the same blocks (the last one reaches
    back a whole T and scores what is left): the evaluation's own path to the hidden states
    must stay the model's."""
    model = from_pretrained(str(hf_dir)).eval()
    stream = text_stream(DOCS[0], gpt2_tok)
    ids = torch.from_numpy(stream.tokens)
    n = len(ids) - 1
    total, blocks = 0.0, list(range(0, n - T + 1, T))
    if n % T:
        blocks.append(n - T)
    for k, s in enumerate(blocks):
        x, y = ids[s : s + T], ids[s + 1 : s + T + 1].clone()
        if k and s < blocks[k - 1] + T:  # the last block overlaps the one before: not twice
            y[: blocks[k - 1] + T - s] = -100
        with torch.no_grad():
            total += model(x[None], y[None], reduction="sum")[1].item()
    score = score_stream(model, stream, batch_size=2)
    assert score.windows == len(blocks) == math.ceil(n / T)
    assert score.nats == pytest.approx(total, rel=1e-6)


def test_batching_and_training_mode(hf_dir, gpt2_tok):
    model = from_pretrained(str(hf_dir)).train()
    stream = text_stream(DOCS, gpt2_tok)
    one = score_stream(model, stream, stride=9, batch_size=1)
    many = score_stream(model, stream, stride=9, batch_size=7)
    assert model.training  # put back as found
    assert one.nats == pytest.approx(many.nats, rel=1e-6) and one.windows == many.windows


def test_bytes_are_the_utf8_bytes_of_exactly_the_text_scored(gpt2_tok):
    stream = text_stream(DOCS, gpt2_tok)
    assert stream.bytes == sum(len(d.encode("utf-8")) for d in DOCS)
    cut = text_stream(DOCS, gpt2_tok, max_tokens=25)  # cuts inside a multi-byte character
    ids = gpt2_tok.encode_ordinary(DOCS[0])[:25]
    assert cut.text_tokens == 25 and cut.truncated
    assert cut.bytes == len(gpt2_tok.decode_bytes(ids))


def test_log_softmax_is_over_the_real_vocabulary():
    model = tiny_gpt(seed=4, vocab_size=300, pad_vocab=True)  # 320 rows in the head
    tok = RegexTokenizer()
    tok.train("abc abd abe " * 10, vocab_size=260)
    stream = text_stream("abc abe abd abc", tok)
    ids = torch.from_numpy(stream.tokens)
    with torch.no_grad():
        logits = model(ids[None, :-1])[0][0, :, :300]
    expected = -logits.log_softmax(-1).gather(1, ids[1:, None]).sum().item()
    assert score_stream(model, stream).nats == pytest.approx(expected, rel=1e-6)


def test_bf16_autocast_is_close(hf_dir, gpt2_tok):
    model = from_pretrained(str(hf_dir))
    stream = text_stream(DOCS[0], gpt2_tok)
    fp32 = score_stream(model, stream).loss
    assert score_stream(model, stream, dtype=torch.bfloat16).loss == pytest.approx(fp32, rel=2e-2)


# ----------------------------------------------------------------------------- multiple choice


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows),
        encoding="utf-8",
    )
    return path


ITEMS = [
    {"ctx": "A man is sitting on a roof. He", "label": 2,
     "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                 "is holding a rubik's cube.", "starts pulling up roofing on a roof."]},
    {"ctx_a": "A woman is outside with a bucket and a dog.", "ctx_b": "the dog", "label": "1",
     "endings": ["runs around.", "gets into the bath tub.", "sits.", "barks"]},
    {"context": "The capital of France is", "choices": ["Paris", "London", "a city in Spain"],
     "answer": 0},
]  # fmt: skip


def test_multiple_choice_scores_equal_hf(hf_dir, hf_ref, gpt2_tok, tmp_path):
    task = read_task(write_jsonl(tmp_path / "mc.jsonl", [*ITEMS, "", ITEMS[0]]))
    assert [i.line for i in task.items] == [1, 2, 3, 5]
    assert task.items[1].context == "A woman is outside with a bucket and a dog. the dog"
    model = from_pretrained(str(hf_dir))
    score = score_task(model, gpt2_tok, task, batch_size=1)
    right = right_norm = right_per_token = 0
    for item, pred in zip(task.items, score.predictions, strict=True):
        ctx = gpt2_tok.encode_ordinary(item.context)
        sums, means, per_char = [], [], []
        for ending in item.endings:
            end = gpt2_tok.encode_ordinary(" " + ending)
            logp = hf_logprobs(hf_ref, ctx + end)[-len(end) :]
            sums.append(logp.sum().item())
            means.append(logp.mean().item())
            per_char.append(logp.sum().item() / len(ending))  # lm-eval: len(choice)
        assert pred["logprob_sum"] == pytest.approx(sums, abs=1e-4)
        assert pred["logprob_per_token"] == pytest.approx(means, abs=1e-4)
        assert pred["logprob_per_char"] == pytest.approx(per_char, abs=1e-4)
        assert pred["pred"] == max(range(len(sums)), key=sums.__getitem__)
        assert pred["pred_norm"] == max(range(len(per_char)), key=per_char.__getitem__)
        assert pred["pred_per_token"] == max(range(len(means)), key=means.__getitem__)
        right += pred["pred"] == item.label
        right_norm += pred["pred_norm"] == item.label
        right_per_token += pred["pred_per_token"] == item.label
    assert (score.n, score.acc, score.acc_norm, score.acc_per_token) == (
        4,
        right / 4,
        right_norm / 4,
        right_per_token / 4,
    )
    assert score.truncated == 0


def test_a_long_context_loses_tokens_on_the_left(hf_dir, hf_ref, gpt2_tok, tmp_path):
    context = "word " * 60  # 60 tokens, T = 32
    item = {"context": context, "choices": ["yes indeed", "no"], "answer": 0}
    score = score_task(
        from_pretrained(str(hf_dir)), gpt2_tok, read_task(write_jsonl(tmp_path / "l.jsonl", [item]))
    )
    assert score.truncated == 1 and score.predictions[0]["truncated"]
    end = gpt2_tok.encode_ordinary(" yes indeed")
    full = (gpt2_tok.encode_ordinary(context) + end)[-(T + 1) :]
    expected = hf_logprobs(hf_ref, full)[-len(end) :].sum().item()
    assert score.predictions[0]["logprob_sum"][0] == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"ctx": "a", "endings": ["b", "c"]', r"bad\.jsonl:2: not valid JSON"),
        ('{"ctx": "a", "endings": ["b", "c"]}', r"bad\.jsonl:2: missing 'label'"),
        ('{"endings": ["b", "c"], "label": 0}', r"bad\.jsonl:2: a HellaSwag line needs 'ctx'"),
        ('{"context": "a", "answer": 0}', r"bad\.jsonl:2: missing 'choices'"),
        ('{"ctx": "a", "endings": ["b", "c"], "label": 2}', r"'label' is 2, out of range for 2"),
        ('{"ctx": "a", "endings": ["b", "c"], "label": -1}', r"'label' is -1, out of range"),
        ('{"ctx": "a", "endings": ["b", " "], "label": 0}', r"endings\[1\] is empty"),
        ('{"context": "a", "choices": ["b"], "answer": 0}', r"a list of at least 2 strings"),
        ('{"context": "a", "choices": ["b", "c"], "answer": "x"}', r"must be an integer index"),
        ('{"question": "a"}', r"neither HellaSwag's keys .* it has 'question'"),
        ("[1, 2]", r"bad\.jsonl:2: expected a JSON object"),
    ],
)
def test_bad_task_lines_name_the_file_line_and_what_is_wrong(tmp_path, line, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [ITEMS[2], line])
    with pytest.raises(MyGPT2Error, match=message):
        read_task(path)


def test_empty_or_missing_task_files(tmp_path):
    with pytest.raises(MyGPT2Error, match="holds no items"):
        read_task(write_jsonl(tmp_path / "e.jsonl", ["", "  "]))
    with pytest.raises(MyGPT2Error, match="does not exist"):
        read_task(tmp_path / "nope.jsonl")


def test_an_ending_longer_than_T_is_refused(hf_dir, gpt2_tok, tmp_path):
    item = {"context": "a", "choices": ["b " * 40, "c"], "answer": 0}
    with pytest.raises(MyGPT2Error, match=r"l\.jsonl:1: ending 0 is \d+ tokens, more than .* T=32"):
        score_task(
            from_pretrained(str(hf_dir)),
            gpt2_tok,
            read_task(write_jsonl(tmp_path / "l.jsonl", [item])),
        )


def test_wilson_interval_known_values():
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(2955, 10000) == pytest.approx((0.2866, 0.3046), abs=1e-4)


# ----------------------------------------------------------------------------- command line


def test_two_models_with_different_tokenizers_side_by_side(
    hf_dir, ckpt_path, gpt2_tiktoken_path, tmp_path, capsys
):
    text = tmp_path / "t.txt"
    text.write_text(DOCS[1], encoding="utf-8")
    tasks = write_jsonl(tmp_path / "mc.jsonl", ITEMS)
    preds = tmp_path / "p.jsonl"
    argv = ["eval", "--checkpoint", str(ckpt_path), str(hf_dir), "--data", str(text), "--json", "-"]
    argv += [f"--tiktoken_file={gpt2_tiktoken_path}", f"--tasks={tasks}", f"--predictions={preds}"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)  # --json -: stdout holds only the JSON
    names = [m["name"] for m in report["models"]]
    assert names == [str(ckpt_path), str(hf_dir)]  # command-line order
    for m in report["models"]:
        assert {"loss", "perplexity", "bits_per_byte", "tokens", "bytes"} <= set(m)
        assert m["bytes"] == len(DOCS[1].encode("utf-8"))
        assert set(m["tasks"]["mc"]) >= {"acc", "acc_norm", "acc_per_token", "n"}
        assert m["tasks"]["mc"]["n"] == 3
    assert report["models"][0]["tokens"] != report["models"][1]["tokens"]
    assert "different tokenizers" in report["notes"][0] and "bits per byte" in report["notes"][0]
    table = captured.err
    assert "bits/byte" in table and "mc acc (n=3)" in table and "note: the models use" in table
    rows = [json.loads(line) for line in preds.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 6 and {r["model"] for r in rows} == set(names)

    # the other order, and the checkpoint named by its out_dir
    assert main(["eval", str(hf_dir), "--out_dir", str(ckpt_path.parent), *argv[4:]]) == 0
    names = [m["name"] for m in json.loads(capsys.readouterr().out)["models"]]
    assert names == [str(hf_dir), str(ckpt_path.parent)]


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "nothing to evaluate: give a text with --data"),
        (["--data={text}", "--stride=0"], "--stride must be at least 1"),
        (["--data={text}", "--stride=65"], "stride must be between 1 and the context length T=64"),
        (["--data={text}", "--context=65"], "--context 65 is longer than"),
        (["--data={empty}"], "holds no text to score"),
        (["--data={text}", "--batch_size=two"], "--batch_size must be an integer"),
        (["--tasks={bad}"], r"bad\.jsonl:1: missing 'answer'"),
        (["--data={text}", "--predictions=p.jsonl"], "--predictions writes task items"),
        (["{missing}", "--data={text}"], "is not a checkpoint file, an out_dir"),
        (["{empty_dir}", "--data={text}"], "neither checkpoint.pt"),
        (["--checkpoint={ckpt}", "{ckpt}", "--data={text}"], "is named twice"),
        (
            ["{small_hf}", "--data={text}", "--tokenizer_path={tok}"],
            "has 300 ids, more than .* 100",
        ),
    ],
)
def test_command_errors_are_one_line_with_exit_2(ckpt_path, tmp_path, capsys, args, message):
    paths = {
        "text": tmp_path / "t.txt",
        "empty": tmp_path / "empty.txt",
        "bad": write_jsonl(tmp_path / "bad.jsonl", ['{"context": "a", "choices": ["b", "c"]}']),
        "empty_dir": tmp_path / "nothing",
        "ckpt": ckpt_path,
        "missing": tmp_path / "nope.pt",
        "small_hf": tmp_path / "small_hf",
        "tok": ckpt_path.parent / "tokenizer.json",
    }
    paths["text"].write_text(DOCS[0], encoding="utf-8")
    paths["empty"].write_text("", encoding="utf-8")
    paths["empty_dir"].mkdir()
    if "{small_hf}" in args:  # GPT-2 weights with a 100-word vocabulary
        hf_model((1, 1, 16, 32, 100)).save_pretrained(paths["small_hf"])
    argv = ["eval", *[a.format(**paths) for a in args]]
    if not any(a.startswith(("--checkpoint", "{")) for a in args):
        argv.append(f"--checkpoint={ckpt_path}")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("mygpt2 eval: error:")


def test_context_max_tokens_and_the_stdlib_corpus(hf_dir, gpt2_tiktoken_path, capsys):
    argv = ["eval", str(hf_dir), "--data=stdlib", "--stdlib_max_mb=0.05", "--max_tokens=100"]
    argv += ["--context=16", "--stride=8", f"--tiktoken_file={gpt2_tiktoken_path}", "--json=-"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    model = json.loads(captured.out)["models"][0]
    assert (model["T"], model["stride"], model["tokens"], model["windows"]) == (16, 8, 100, 12)
    assert model["text_truncated"] and "--max_tokens scored the first 100 tokens" in captured.err


# ------------------------------------------------------------- defaults and boundaries (#22)


def test_the_stream_by_hand_and_a_text_of_exactly_max_tokens_is_whole():
    """Byte-level ids: end-of-text (256) before each document; max_tokens equal to the text's
    tokens keeps it whole and says so; one fewer cuts the last byte."""
    tok = RegexTokenizer(name="bytes")
    stream = text_stream(["ab", "c"], tok)
    assert stream.tokens.tolist() == [256, 97, 98, 256, 99]
    assert (stream.text_tokens, stream.bytes, stream.documents) == (3, 3, 2)
    whole = text_stream(["ab", "c"], tok, max_tokens=3)
    assert whole.tokens.tolist() == [256, 97, 98, 256, 99] and not whole.truncated
    cut = text_stream(["ab", "c"], tok, max_tokens=2)
    assert cut.tokens.tolist() == [256, 97, 98] and cut.truncated and cut.text_tokens == 2


def test_score_streams_defaults_stride_t_and_refuses_batch_size_0():
    tok = RegexTokenizer(name="bytes")
    model = tiny_gpt(seed=1, vocab_size=tok.vocab_size, T=8)
    stream = text_stream("To be, or not to be", tok)  # 19 bytes: 19 predictions
    score = score_stream(model, stream)
    assert (score.stride, score.windows, score.tokens) == (8, 3, 19)  # ceil(19 / 8) blocks
    assert score_stream(model, stream, stride=8, batch_size=1).nats == pytest.approx(score.nats)
    with pytest.raises(MyGPT2Error, match="batch_size must be at least 1, got 0"):
        score_stream(model, stream, batch_size=0)


def test_validation_nats_and_count_leave_ignored_targets_out():
    """batches_nll against F.cross_entropy by hand: -100 targets neither cost nor count."""
    from torch.nn import functional as F

    from mygpt2.evaluation.text import batches_nll

    model = tiny_gpt(seed=2).train()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 61, (3, 10), generator=g)
    y = torch.randint(0, 61, (3, 10), generator=g)
    y[0, :4] = -100
    y[2, 9] = -100
    nats, count = batches_nll(model, [(x[:2], y[:2]), (x[2:], y[2:])])
    with torch.no_grad():
        logits, _ = model.eval()(x)
    expected = F.cross_entropy(logits.flatten(0, 1).double(), y.flatten(), reduction="sum")
    assert count.item() == 30 - 5
    assert nats.item() == pytest.approx(expected.item(), rel=1e-5)


def test_mygpt2_eval_defaults_to_disjoint_blocks(ckpt_path, tmp_path, capsys):
    """Without --stride the command scores windows of T = 64 moving by 64, as its help says."""
    text = tmp_path / "t.txt"
    text.write_text(DOCS[0], encoding="utf-8")
    assert main(["eval", f"--checkpoint={ckpt_path}", f"--data={text}", "--json=-"]) == 0
    got = json.loads(capsys.readouterr().out)["models"][0]
    assert (got["T"], got["stride"]) == (64, 64)
    assert got["windows"] == math.ceil(got["tokens"] / 64) and got["tokens"] > 64
