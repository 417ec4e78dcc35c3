"""mygpt2 serve: the OpenAI-compatible API against the official `openai` client on a live
server (loopback, a free port), greedy and seeded completions equal to `mygpt2 sample`,
log-probabilities against a forward pass by hand, stop sequences, bad requests, the API key,
cancellation on disconnect, first-come-first-served order, the page's views against
`mygpt2.inspect`, and the training view's reading of a metrics.jsonl being written."""

from __future__ import annotations

import codecs
import itertools
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

from models import tiny_gpt  # noqa: E402

from mygpt2.checkpoint import save_checkpoint  # noqa: E402
from mygpt2.cli import main  # noqa: E402
from mygpt2.commands.args import load_config  # noqa: E402
from mygpt2.generate import generate, generate_stream  # noqa: E402
from mygpt2.inspect import attention, logit_lens, token_losses  # noqa: E402
from mygpt2.sample import load_model, sample  # noqa: E402
from mygpt2.serve.app import Background, create_app  # noqa: E402
from mygpt2.serve.completions import Limits  # noqa: E402
from mygpt2.serve.engine import Engine  # noqa: E402
from mygpt2.tokenizer import RegexTokenizer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PROMPT = "ROMEO: héllo"


def make_checkpoint(root: Path) -> Path:
    """A tiny random model (weights scaled up so its choices vary) with a 280-token byte-level
    BPE tokenizer."""
    tok = RegexTokenizer()
    tok.train("ROMEO: héllo there, friend! wörld 日本語\n" * 40, vocab_size=280)
    tok.save(root / "tokenizer.json")
    cfg = load_config(
        [f"--tokenizer_path={root / 'tokenizer.json'}", "--n_layers=2", "--n_heads=2",
         "--n_emb=32", "--T=64", f"--vocab_size={tok.vocab_size}"]
    )  # fmt: skip
    model = tiny_gpt(seed=5, n_layers=2, n_heads=2, n_emb=32, T=64, vocab_size=tok.vocab_size)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(6)
    tokenizer = {"name": tok.name, "fingerprint": tok.fingerprint()}
    state = {"model": model.state_dict(), "config": cfg.to_dict(), "tokenizer": tokenizer}
    save_checkpoint(root / "checkpoint.pt", state)
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def engine(run_dir):
    model, tok = load_model(load_config([f"--out_dir={run_dir}", "--device=cpu"]))
    engine = Engine(model, tok, "tiny", Limits(max_tokens=2000, max_choices=4))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def server(engine, run_dir):
    with Background(create_app(engine, out_dir=str(run_dir))) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def load_model_tok(run_dir: Path) -> RegexTokenizer:
    return RegexTokenizer.load(run_dir / "tokenizer.json")


def sample_text(run_dir: Path, *flags: str) -> tuple[list[str], int]:
    """What `mygpt2 sample` makes with these flags: the texts after the start, and tokens."""
    cfg = load_config([f"--out_dir={run_dir}", "--device=cpu", f"--start={PROMPT}", *flags])
    done = sample(cfg)
    return [t[len(PROMPT) :] for t in done.texts], done.tokens


# ---------------------------------------------------------------------------- the API


def test_models_lists_the_one_model(client):
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_models_retrieve_gives_the_model_or_openais_404(client, server):
    model = client.models.retrieve("tiny")
    assert (model.id, model.object, model.owned_by) == ("tiny", "model", "mygpt2")
    assert model.created == client.models.list().data[0].created
    for other in ("gpt-3.5-turbo-instruct", "org/tiny", "TINY"):
        with pytest.raises(openai.NotFoundError, match=re.escape(other)):
            client.models.retrieve(other)
    error = assert_openai_error(httpx.get(server.url + "/v1/models/nope"), 404)
    assert (error["param"], error["code"]) == ("model", "model_not_found")
    assert error["type"] == "invalid_request_error"


def test_greedy_completion_equals_mygpt2_sample_token_for_token(client, run_dir):
    [expected], n = sample_text(run_dir, "--temperature=0", "--max_new_tokens=40")
    got = client.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=40, temperature=0, logprobs=0
    )
    choice = got.choices[0]
    assert choice.text == expected
    assert choice.finish_reason == ("length" if n == 40 else "stop")
    # an end-of-text token that ends the text is generated too: counted, with its entry
    ended = int(choice.finish_reason == "stop")
    assert got.usage.completion_tokens == n + ended
    assert got.usage.prompt_tokens == len(load_model_tok(run_dir).encode_ordinary(PROMPT))
    assert len(choice.logprobs.tokens) == n + ended


def test_seeded_choices_equal_mygpt2_sample_with_the_same_seeds(client, run_dir):
    flags = ["--temperature=0.9", "--top_k=40", "--top_p=0.95", "--max_new_tokens=30"]
    expected, n = sample_text(run_dir, *flags, "--seed=7", "--num_samples=3")
    got = client.completions.create(
        model="tiny",
        prompt=PROMPT,
        max_tokens=30,
        temperature=0.9,
        top_p=0.95,
        n=3,
        seed=7,
        extra_body={"top_k": 40},
    )
    assert [c.text for c in got.choices] == expected
    assert [c.index for c in got.choices] == [0, 1, 2]
    assert got.usage.completion_tokens == n
    assert len(set(expected)) > 1  # the seeds differ, so do the texts


def test_streaming_gives_the_same_text_in_pieces_then_usage_then_done(client, server, engine):
    kwargs = dict(model="tiny", prompt=PROMPT, max_tokens=50, temperature=1.0, seed=3)
    whole = client.completions.create(**kwargs).choices[0].text
    chunks = list(
        client.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
    )
    pieces = [c.choices[0] for c in chunks if c.choices]
    assert "".join(p.text for p in pieces) == whole
    assert len(pieces) > 5  # token by token, not all at the end
    assert [p.finish_reason for p in pieces[:-1]] == [None] * (len(pieces) - 1)
    assert pieces[-1].finish_reason in ("stop", "length")
    assert chunks[-1].choices == []
    assert chunks[-1].usage.prompt_tokens == len(engine.tok.encode_ordinary(PROMPT))
    # the raw event stream ends with OpenAI's terminator
    body = {"prompt": PROMPT, "max_tokens": 3, "stream": True}
    raw = httpx.post(server.url + "/v1/completions", json=body).text
    events = [e for e in raw.split("\n\n") if e]
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: ") for e in events)


def test_logprobs_equal_a_forward_pass_by_hand(client, engine):
    got = client.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=12, temperature=0.7, seed=1, logprobs=3, echo=True
    )
    lp = got.choices[0].logprobs
    prompt_ids = engine.tok.encode_ordinary(PROMPT)
    eot = [engine.tok.eot_id]
    new_ids = generate(engine.model, prompt_ids, 12, temperature=0.7, seed=1, stop_tokens=eot)[0]
    ids = prompt_ids + new_ids
    assert got.choices[0].text.startswith(PROMPT)
    assert len(lp.tokens) == len(ids) and lp.text_offset[0] == 0
    assert b"".join(as_bytes(t) for t in lp.tokens) == engine.tok.decode_bytes(ids)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    with torch.no_grad():
        logits, _ = engine.model(torch.tensor([ids]))
    ref = F.log_softmax(logits[0, :-1].double(), dim=-1)  # the prediction of each next token
    for pos in range(1, len(ids)):
        assert lp.token_logprobs[pos] == pytest.approx(float(ref[pos - 1, ids[pos]]), abs=1e-4)
        top = sorted(lp.top_logprobs[pos].values(), reverse=True)
        want = ref[pos - 1].topk(3).values.tolist()
        assert len(top) >= 1 and top == pytest.approx(want[: len(top)], abs=1e-4)
    # a token's offset: the characters the tokens before it decode to (bytes of a character
    # split over tokens wait for the rest)
    for pos, offset in enumerate(lp.text_offset):
        before = engine.tok.decode_bytes(ids[:pos])
        assert offset == len(codecs.getincrementaldecoder("utf-8")("replace").decode(before))


def as_bytes(token: str) -> bytes:
    """A token of OpenAI's logprobs as bytes (`bytes:\\xNN...` or text)."""
    if token.startswith("bytes:"):
        return bytes(int(h, 16) for h in token[6:].split("\\x")[1:])
    return token.encode("utf-8")


def test_echo_scores_a_prompt_as_per_token_loss_does(client, engine):
    """max_tokens 0 + echo + logprobs: how evaluation harnesses score text over the API."""
    got = client.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=0, echo=True, logprobs=0
    )
    ids = engine.tok.encode_ordinary(PROMPT)
    expected = (-token_losses(engine.model, ids)[0]).tolist()
    assert got.choices[0].text == PROMPT
    assert got.choices[0].logprobs.token_logprobs[1:] == pytest.approx(expected, abs=1e-4)
    assert got.usage.completion_tokens == 0


def test_token_id_prompts_and_batches_of_prompts(client, engine):
    kwargs = dict(model="tiny", max_tokens=15, temperature=0)
    by_text = client.completions.create(prompt=PROMPT, **kwargs).choices[0].text
    ids = engine.tok.encode_ordinary(PROMPT)
    assert client.completions.create(prompt=ids, **kwargs).choices[0].text == by_text
    other = client.completions.create(prompt="wörld", **kwargs).choices[0].text
    both = client.completions.create(prompt=[PROMPT, "wörld"], **kwargs)
    assert [c.text for c in both.choices] == [by_text, other]
    assert both.usage.prompt_tokens == len(ids) + len(engine.tok.encode_ordinary("wörld"))
    as_ids = client.completions.create(prompt=[ids, ids[:2]], **kwargs)
    assert as_ids.choices[0].text == by_text and len(as_ids.choices) == 2


def test_stop_sequences_cut_the_text_streamed_or_not(client):
    kwargs = dict(model="tiny", prompt=PROMPT, max_tokens=60, temperature=1.0, seed=11)
    full = client.completions.create(**kwargs).choices[0].text
    assert len(full) > 20
    early, late = full[12:14], full[20:23]
    cut = min(full.find(early), full.find(late))
    for stream in (False, True):
        got = client.completions.create(**kwargs, stop=[late, early], stream=stream, logprobs=0)
        choices = [c.choices[0] for c in got] if stream else got.choices
        text = "".join(c.text for c in choices)
        assert text == full[:cut]
        assert choices[-1].finish_reason == "stop"
        raw = b"".join(as_bytes(t) for c in choices for t in c.logprobs.tokens)
        assert raw.decode("utf-8", "replace").startswith(text)  # the tokens that hold the text
    one = client.completions.create(**kwargs, stop=late).choices[0]
    assert one.text == full[: full.find(late)]


# ---------------------------------------------------------------------------- bad requests
BAD = [
    ({"prompt": PROMPT, "max_tokens": "5"}, "max_tokens", "invalid_type"),
    ({"prompt": PROMPT, "max_tokens": -1}, "max_tokens", "invalid_value"),
    ({"prompt": PROMPT, "max_tokens": 10**9}, "max_tokens", "invalid_value"),
    ({"prompt": PROMPT, "temperature": True}, "temperature", "invalid_type"),
    ({"prompt": PROMPT, "temperature": -0.5}, "temperature", "invalid_value"),
    ({"prompt": PROMPT, "top_p": 0}, "top_p", "invalid_value"),
    ({"prompt": PROMPT, "n": 5}, "n", "invalid_value"),
    ({"prompt": [PROMPT, PROMPT, PROMPT], "n": 2}, "n", "invalid_value"),
    ({"prompt": ""}, "prompt", "invalid_value"),
    ({"prompt": []}, "prompt", "invalid_value"),
    ({"prompt": [3, 999]}, "prompt", "invalid_value"),
    ({"prompt": [3, 280]}, "prompt", "invalid_value"),
    ({"prompt": [[1], "a"]}, "prompt", "invalid_type"),
    ({}, "prompt", "missing_required"),
    ({"prompt": "x" * 400}, "prompt", "context_length_exceeded"),
    ({"prompt": PROMPT, "stop": ["a", "b", "c", "d", "e"]}, "stop", "invalid_value"),
    ({"prompt": PROMPT, "stop": "s" * 65}, "stop", "invalid_value"),
    ({"prompt": PROMPT, "stop": [""]}, "stop", "invalid_value"),
    ({"prompt": PROMPT, "stop": 5}, "stop", "invalid_type"),
    ({"prompt": PROMPT, "logprobs": 21}, "logprobs", "invalid_value"),
    ({"prompt": PROMPT, "seed": 1.5}, "seed", "invalid_type"),
    ({"prompt": PROMPT, "stream": "yes"}, "stream", "invalid_type"),
    ({"prompt": PROMPT, "stream_options": {"include_usage": True}}, "stream_options", "invalid_value"),
    ({"prompt": PROMPT, "max_token": 5}, "max_token", "unknown_parameter"),
    ({"prompt": PROMPT, "frequency_penalty": 0.5}, "frequency_penalty", "unsupported"),
    ({"prompt": PROMPT, "best_of": 3}, "best_of", "unsupported"),
    ({"prompt": "\ud800"}, "prompt", "invalid_value"),  # JSON's escape of a lone surrogate
    ({"prompt": "ab\udfff", "echo": True, "max_tokens": 0}, "prompt", "invalid_value"),
    ({"prompt": [PROMPT, "\udc80"]}, "prompt", "invalid_value"),
    ([PROMPT], None, "invalid_json"),
]  # fmt: skip


def assert_openai_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and len(error["message"]) > 10
    return error


@pytest.mark.parametrize(("body", "param", "code"), BAD)
def test_bad_fields_are_400_in_openai_shape(server, body, param, code):
    # json.dumps's ASCII escapes, as curl may send them (httpx's own json= cannot encode a
    # lone surrogate)
    sent = httpx.post(
        server.url + "/v1/completions",
        content=json.dumps(body),
        headers={"Content-Type": "application/json"},
    )
    error = assert_openai_error(sent, 400)
    assert (error["param"], error["code"]) == (param, code)
    assert error["type"] == "invalid_request_error"


def test_best_of_is_refused_unless_it_equals_n_and_says_so(server):
    url = server.url + "/v1/completions"
    error = assert_openai_error(httpx.post(url, json={"prompt": PROMPT, "best_of": 2}), 400)
    assert "only null or the same as n" in error["message"]
    same = httpx.post(url, json={"prompt": PROMPT, "best_of": 2, "n": 2, "max_tokens": 1})
    assert same.status_code == 200 and len(same.json()["choices"]) == 2


def test_bad_bodies_routes_and_methods(server):
    url = server.url + "/v1/completions"
    json_header = {"Content-Type": "application/json"}
    error = assert_openai_error(
        httpx.post(url, content=b'{"prompt": "a",', headers=json_header), 400
    )
    assert error["code"] == "invalid_json"
    deep = b"[" * 100_000 + b"]" * 100_000
    assert_openai_error(httpx.post(url, content=deep, headers=json_header), 400)
    assert_openai_error(httpx.post(url, content=b"\xff\xfe", headers=json_header), 400)
    assert_openai_error(httpx.post(url, data={"prompt": "a"}), 415)  # a form post
    big = json.dumps({"prompt": "a" * 1_100_000})
    assert_openai_error(httpx.post(url, content=big, headers=json_header), 413)
    assert assert_openai_error(httpx.get(url), 405)["code"] == "method_not_allowed"
    assert assert_openai_error(httpx.get(server.url + "/v1/nothing"), 404)["code"] == "not_found"
    wrong_host = httpx.get(server.url + "/v1/models", headers={"Host": "evil.example:80"})
    assert_openai_error(wrong_host, 421)
    # the official client turns them into its exceptions
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0).completions.create(
            model="tiny", prompt="a", max_tokens=-3
        )
    # and the server still answers
    assert httpx.get(server.url + "/v1/models").status_code == 200


def test_api_key_is_required_when_set(engine):
    with Background(create_app(engine, api_key="s3cret")) as keyed:
        url = keyed.url + "/v1/models"
        assert assert_openai_error(httpx.get(url), 401)["code"] == "invalid_api_key"
        bad = {"Authorization": "Bearer nope"}
        assert_openai_error(httpx.get(url, headers=bad), 401)
        assert_openai_error(httpx.post(keyed.url + "/api/tokens", json={"text": "a"}), 401)
        assert_openai_error(httpx.get(keyed.url + "/v1/models/tiny"), 401)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=keyed.url + "/v1", api_key="nope", max_retries=0).models.list()
        good = openai.OpenAI(base_url=keyed.url + "/v1", api_key="s3cret", max_retries=0)
        assert good.completions.create(model="tiny", prompt="a", max_tokens=2).usage.total_tokens
        assert httpx.get(keyed.url + "/").status_code == 200  # the page itself is public


# ---------------------------------------------------------------------------- serving


class Slow:
    """Make every forward pass of the model take `seconds` longer and never choose the
    end-of-text token, so generations last until cancelled or `max_tokens`."""

    def __init__(self, engine: Engine, seconds: float):
        self.engine, self.seconds = engine, seconds

    def hook(self, module, args, output):
        time.sleep(self.seconds)
        logits, loss = output
        logits[..., self.engine.eot_id] = float("-inf")
        return logits, loss

    def __enter__(self):
        self.handle = self.engine.model.register_forward_hook(self.hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def wait_for(condition, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def test_a_client_that_disconnects_cancels_its_generation(server, engine):
    body = {"prompt": PROMPT, "max_tokens": 2000, "temperature": 1.0, "stream": True}
    with Slow(engine, 0.005):
        before = dict(engine.stats)
        with httpx.stream("POST", server.url + "/v1/completions", json=body) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
        # the stream was closed after its first event: the job stops within a few tokens
        assert wait_for(lambda: engine.stats["cancelled"] == before.get("cancelled", 0) + 1)
        assert engine.stats["tokens"] - before.get("tokens", 0) < 300
        # not streaming: a client that times out is gone too
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(server.url + "/v1/completions", json={**body, "stream": False}, timeout=0.3)
        assert wait_for(lambda: engine.stats["cancelled"] == before.get("cancelled", 0) + 2)
    quick = httpx.post(server.url + "/v1/completions", json={"prompt": "a", "max_tokens": 2})
    assert quick.status_code == 200


def test_requests_are_served_one_at_a_time_first_come_first_served(server, engine):
    spans: dict[int, list[float]] = {}
    queued = [threading.Event() for _ in range(4)]

    def stream(i: int) -> None:
        body = {"prompt": PROMPT, "max_tokens": 25, "stream": True, "seed": i}
        with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as r:
            queued[i].set()  # headers come at once; the text waits for this request's turn
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    spans.setdefault(i, []).append(time.monotonic())

    with Slow(engine, 0.01):
        threads = []
        for i in range(4):  # arrive in order 0, 1, 2, 3
            threads.append(threading.Thread(target=stream, args=(i,)))
            threads[-1].start()
            assert queued[i].wait(timeout=30)
        # meanwhile the event loop answers other routes and bad requests without queueing
        assert httpx.get(server.url + "/v1/models").status_code == 200
        bad = httpx.post(server.url + "/v1/completions", json={"prompt": PROMPT, "n": 99})
        assert bad.status_code == 400
        answered = time.monotonic()
        for t in threads:
            t.join(timeout=60)
    assert answered < spans[3][0]  # before the last request's turn came
    order = sorted(spans, key=lambda i: spans[i][0])
    assert order == [0, 1, 2, 3]
    for a, b in itertools.pairwise(order):
        assert spans[b][0] >= spans[a][-1]  # the next starts after the previous has finished


# ---------------------------------------------------------------------------- the page's views


def test_page_and_static_files_are_served(server):
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "mygpt2 playground" in page.text
    for name in ("app.js", "style.css"):
        assert httpx.get(f"{server.url}/static/{name}").status_code == 200
    links = re.findall(r'(?:src|href)="([^"]*)"', page.text)
    assert links and all(link.startswith("/static/") for link in links)  # nothing from the web


def test_token_view_equals_per_token_loss_and_top_5(server, engine):
    text = "ROMEO: wörld, friend"
    view = httpx.post(server.url + "/api/tokens", json={"text": text}).json()
    ids = engine.tok.encode_ordinary(text)
    assert [t["id"] for t in view["tokens"]] == ids
    assert "".join(t["text"] for t in view["tokens"]) == text
    losses = token_losses(engine.model, ids)[0].tolist()
    assert [t["loss"] for t in view["tokens"][1:]] == pytest.approx(losses, abs=1e-4)
    with torch.no_grad():
        probs = engine.model(torch.tensor([ids]))[0][0, :-1].float().softmax(-1)
    for pos in range(1, len(ids)):
        top = probs[pos - 1].topk(5)
        assert [a["id"] for a in view["tokens"][pos]["top"]] == top.indices.tolist()
        assert [a["prob"] for a in view["tokens"][pos]["top"]] == pytest.approx(
            top.values.tolist(), abs=1e-5
        )
    assert "loss" not in view["tokens"][0]
    empty = httpx.post(server.url + "/api/tokens", json={"text": ""})
    assert_openai_error(empty, 400)
    assert_openai_error(httpx.post(server.url + "/api/tokens", json={"text": 5}), 400)
    lone = json.dumps({"text": "ab\ud800"})  # ASCII escapes, as curl may send them
    headers = {"Content-Type": "application/json"}
    for route in ("/api/tokens", "/api/attention", "/api/lens"):
        sent = httpx.post(server.url + route, content=lone, headers=headers)
        assert "lone surrogate" in assert_openai_error(sent, 400)["message"]


def test_attention_and_lens_views_equal_mygpt2_inspect(server, engine):
    import base64

    import numpy as np

    text = "ROMEO: héllo there"
    ids = engine.tok.encode_ordinary(text)
    view = httpx.post(server.url + "/api/attention", json={"text": text}).json()
    raw = np.frombuffer(base64.b64decode(view["patterns"]), dtype=np.uint8)
    got = torch.from_numpy(raw.copy()).float().view(2, 2, len(ids), len(ids)) / 255
    assert (view["layers"], view["heads"]) == (2, 2)
    assert torch.allclose(got, attention(engine.model, ids)[:, 0], atol=0.5 / 255 + 1e-6)
    lens = httpx.post(server.url + "/api/lens", json={"text": text}).json()
    best = logit_lens(engine.model, ids)[:, 0].softmax(-1).max(-1)
    assert [[t["id"] for t in row] for row in lens["top"]] == best.indices.tolist()
    assert torch.allclose(torch.tensor(lens["probs"]), best.values, atol=1e-4)
    long = httpx.post(server.url + "/api/lens", json={"text": "ab " * 300}).json()
    assert long["truncated"] and len(long["tokens"]) == 64  # the context length


def test_training_view_reads_a_metrics_file_being_written(server, tmp_path):
    url = server.url + "/api/metrics"
    missing = httpx.get(url, params={"out_dir": str(tmp_path / "nope")})
    assert assert_openai_error(missing, 404)["param"] == "out_dir"
    got = httpx.get(url, params={"out_dir": str(tmp_path)}).json()
    assert got["rows"] == [] and got["file"] is None  # no run yet: keep asking
    path = tmp_path / "metrics.jsonl"
    train = {"kind": "train", "step": 1, "loss": 5.0, "lr": 1e-3, "tokens": 512}
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(train) + "\n" + '{"kind": "eval", "step": 1, "val_lo')
        fh.flush()
        got = httpx.get(url, params={"out_dir": str(tmp_path)}).json()
        assert got["rows"] == [train] and got["reset"]
        assert got["offset"] == len(json.dumps(train)) + 1  # the half-written line waits
        fh.write('ss": NaN}\nnot json\n{"kind": "health", "step": 1, "update_ratio": 0.01}\n')
    again = httpx.get(url, params={"out_dir": str(tmp_path), "offset": got["offset"],
                                   "file": got["file"]}).json()  # fmt: skip
    assert not again["reset"] and again["bad_lines"] == 1
    assert again["rows"] == [
        {"kind": "eval", "step": 1, "val_loss": None},  # NaN is not JSON: null
        {"kind": "health", "step": 1, "update_ratio": 0.01},
    ]
    # a run started again rewrites the file: the page starts over
    tmp = tmp_path / "metrics.tmp"
    tmp.write_text(json.dumps(train) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    third = httpx.get(url, params={"out_dir": str(tmp_path), "offset": again["offset"],
                                   "file": again["file"]}).json()  # fmt: skip
    assert third["reset"] and third["rows"] == [train]
    bad = httpx.get(url, params={"out_dir": str(tmp_path), "offset": "-1"})
    assert_openai_error(bad, 400)


def test_compare_route_gives_what_mygpt2_compare_computes(server, tmp_path):
    from test_compare import write_run

    from mygpt2.compare import compare_runs, config_differences, summary

    fast = write_run(tmp_path / "fast", [(2, 3.0, 1.5), (4, 2.5, 1.2)], seconds_per_step=0.25,
                     config={"train": {"lr": 3e-3}})  # fmt: skip
    slow = write_run(tmp_path / "slow", [(2, 3.2, 1.6), (4, 2.9, 1.4)], seconds_per_step=1.0)
    url = server.url + "/api/compare"
    got = httpx.get(url, params={"dirs": f"{slow}, {fast}", "target": "3.0"}).json()
    c = compare_runs([slow, fast], target=3.0)
    assert got == {
        "metric": c.metric,
        "target": 3.0,
        "target_given": True,
        "notes": [],
        "runs": [summary(r, c.metric, c.target) for r in c.runs],
        "differences": [{"key": k, "values": v} for k, v in config_differences(c.runs)],
    }
    # and by hand: the runs in the order given, fast's figures from its rows
    assert [r["run"] for r in got["runs"]] == [str(slow), str(fast)]
    assert got["runs"][1]["best"] == 2.5 and got["runs"][1]["tokens_per_s"] == 400.0
    assert (got["runs"][1]["to_target_s"], got["runs"][0]["to_target_step"]) == (0.5, 4)
    assert {"key": "lr", "values": ["0.001", "0.003"]} in got["differences"]
    assert httpx.get(url, params={"dirs": f"{slow},{fast}"}).json()["target"] == 2.9  # all reached
    no_run = httpx.get(url, params={"dirs": f"{slow},{tmp_path}"})
    assert "has no metrics.jsonl" in assert_openai_error(no_run, 400)["message"]
    assert assert_openai_error(httpx.get(url, params={"dirs": " , "}), 400)["param"] == "dirs"
    bad = httpx.get(url, params={"dirs": str(slow), "target": "low"})
    assert assert_openai_error(bad, 400)["param"] == "target"


def test_mygpt2_compare_says_how_to_watch_the_runs_in_the_playground(tmp_path, capsys):
    from test_compare import write_run

    a = write_run(tmp_path / "a", [(4, 2.5, None)])
    b = write_run(tmp_path / "b", [(4, 2.9, None)])
    assert main(["compare", str(a), str(b), f"--out={tmp_path / 'c.png'}"]) == 0
    hint = capsys.readouterr().out.splitlines()[-1]
    assert hint.startswith(f"live in the playground: mygpt2 serve --out_dir {a} ")
    query = hint.split("/?", 1)[1].split()[0]
    assert urllib.parse.parse_qs(query)["runs"] == [f"{a},{b}"]
    (a / "checkpoint.pt").unlink()
    (b / "checkpoint.pt").unlink()  # nothing for `mygpt2 serve` to load: no hint
    assert main(["compare", str(a), str(b), f"--out={tmp_path / 'c.png'}"]) == 0
    assert "playground" not in capsys.readouterr().out


# ---------------------------------------------------------------------------- the command


def test_command_help_and_bad_flags(capsys, run_dir):
    assert main(["serve", "--help"]) == 0
    assert "OpenAI-compatible" in capsys.readouterr().out
    assert main(["serve", f"--out_dir={run_dir}", "--port", "http"]) == 2
    assert "--port takes a whole number" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert main(["serve", f"--out_dir={run_dir}", "--port", port]) == 2
        assert "Pick another with --port" in capsys.readouterr().err
        # an address off the loopback is warned about (the port being taken, nothing listens)
        assert main(["serve", f"--out_dir={run_dir}", "--host", "0.0.0.0", "--port", port]) == 2
        err = capsys.readouterr().err
        assert "lets other machines reach this server" in err and "no --api_key" in err


def test_command_serves_until_interrupted(run_dir):
    proc = subprocess.Popen(
        [sys.executable, "-m", "mygpt2.cli", "serve", f"--out_dir={run_dir}", "--port", "0",
         "--device", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
        assert lines[1].startswith("  playground  http://127.0.0.1:")
        url = lines[1].split()[-1]
        got = httpx.post(url + "v1/completions", json={"prompt": "a", "max_tokens": 3}).json()
        assert got["usage"]["completion_tokens"] <= 3
        limits = httpx.get(url + "api/info").json()["limits"]  # the documented defaults
        assert (limits["max_tokens"], limits["max_choices"]) == (1024, 8)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert "stopped" in out and proc.returncode == 0, err
    assert "warning" not in err


def test_numbers_in_answers_are_finite_json(server):
    """Every number the API sends is valid JSON (no NaN), so strict parsers accept it."""
    body = {"prompt": PROMPT, "max_tokens": 5, "logprobs": 5, "echo": True}
    text = httpx.post(server.url + "/v1/completions", json=body).text
    parsed = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in {text[:200]}"))
    values = parsed["choices"][0]["logprobs"]["token_logprobs"][1:]
    assert all(math.isfinite(v) for v in values)


# ------------------------------------------------------------- defaults and boundaries (#22)


def test_a_request_with_only_a_prompt_takes_openais_defaults():
    """OpenAI's completions reference: max_tokens 16, temperature 1, top_p 1, n 1, no
    logprobs, no echo, no stop, not streamed."""
    from mygpt2.serve.completions import parse_completion

    req = parse_completion({"prompt": "hi"}, Limits(), 300)
    assert (req.max_tokens, req.temperature, req.top_p, req.top_k, req.n) == (16, 1.0, 1.0, None, 1)
    assert (req.logprobs, req.echo, req.stop, req.stream, req.seed) == (
        None,
        False,
        [],
        False,
        None,
    )


def test_every_limit_includes_its_bound():
    from mygpt2.serve.completions import APIError, parse_completion, usage_body

    limits = Limits(max_tokens=100, max_choices=4, max_stop=2, max_stop_chars=5, max_logprobs=3)

    def ok(**body):
        return parse_completion({"prompt": "hi", **body}, limits, 300)

    def refused(param, **body):
        with pytest.raises(APIError) as e:
            ok(**body)
        assert (e.value.status, e.value.param) == (400, param)

    assert ok(prompt=["a", "b"], n=2).n == 2  # prompts x n exactly at the limit
    assert ok(prompt=["a", "b", "c", "d"]).prompts == ["a", "b", "c", "d"]
    assert ok(n=4).n == 4
    refused("n", prompt=["a", "b", "c"], n=2)
    refused("n", prompt=["a", "b", "c", "d", "e"])
    refused("n", n=5)
    assert ok(max_tokens=100).max_tokens == 100 and ok(max_tokens=0).max_tokens == 0
    refused("max_tokens", max_tokens=101)
    assert ok(stop=["ab", "abcde"]).stop == ["ab", "abcde"]
    refused("stop", stop=["a", "b", "c"])
    refused("stop", stop="abcdef")
    assert ok(logprobs=3).logprobs == 3 and ok(logprobs=0).logprobs == 0
    refused("logprobs", logprobs=4)
    assert ok(prompt=[0, 299]).prompts == [[0, 299]]  # the first and last ids
    refused("prompt", prompt=[0, 300])
    assert ok(best_of=1).n == 1 and ok(n=3, best_of=3).n == 3  # best_of = n: a no-op
    refused("best_of", best_of=2)
    assert usage_body(3, 5) == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}


def test_stop_sequences_the_first_found_wins_and_partial_ones_wait():
    from mygpt2.serve.engine import held_back, stop_position

    assert stop_position("say abcabc", ["c", "b"], 0) == 5  # 'b' comes first
    assert stop_position("say abcabc", ["c", "b"], 7) == 8
    assert stop_position("say", ["x"], 0) is None
    assert held_back("hello wor", ["world", "!"]) == 3  # 'wor' may begin 'world'
    assert held_back("xab", ["abc", "bq"]) == 2
    assert held_back("xab", ["zz"]) == 0


def test_a_prompt_of_exactly_t_tokens_fits(engine):
    from mygpt2.serve.completions import APIError

    assert engine.encode([[1] * 64]) == [[1] * 64]  # T = 64
    with pytest.raises(APIError, match="65 tokens; this model's context length is 64"):
        engine.encode([[1] * 65])


def test_lm_evals_request_on_a_model_that_ends_the_text(client, engine):
    """lm-evaluation-harness's local-completions request (max_tokens 1, echo, logprobs 1) when
    the model's next token is end-of-text: the last logprobs entry is that token, at the end
    of the text, counted in usage."""
    eot = engine.tok.eot_id

    def ends(logits, name):
        logits = logits.clone()
        logits[..., eot] = logits.max() + 30.0  # every other token ~30 nats less likely
        return logits

    with engine.model.hooks([("hook_logits", ends)]):
        got = client.completions.create(
            model="tiny", prompt=PROMPT, max_tokens=1, echo=True, logprobs=1, temperature=0
        )
    choice = got.choices[0]
    n = len(engine.tok.encode_ordinary(PROMPT))
    assert choice.text == PROMPT and choice.finish_reason == "stop"
    assert len(choice.logprobs.tokens) == n + 1
    assert choice.logprobs.tokens[-1] == "<|endoftext|>"
    assert choice.logprobs.text_offset[-1] == len(PROMPT)
    assert -1e-6 < choice.logprobs.token_logprobs[-1] <= 0.0
    assert got.usage.completion_tokens == 1 and got.usage.total_tokens == n + 1


def test_ids_past_the_tokenizers_are_padding_not_tokens():
    """A model whose vocabulary is padded past its tokenizer's (here 300 rows, 280 ids):
    requests may use ids 0..279 only, and a padding id has no text."""
    tok = RegexTokenizer()
    tok.train("ROMEO: héllo there, friend! wörld 日本語\n" * 40, vocab_size=280)
    engine = Engine(tiny_gpt(seed=1, vocab_size=300, T=16), tok, "padded")
    try:
        assert engine.vocab_size == 280 and engine.eot_id == 279
        assert engine.token_bytes(290) == b"" and engine.token_bytes(65) == b"A"
    finally:
        engine.close()


def test_a_threads_option_above_the_cores_is_lowered_with_a_warning():
    """`mygpt2 serve --threads N` with N above this machine's cores runs on the cores and
    says so in one line; at or below, the model's thread keeps what was asked."""
    from mygpt2.runtime import available_cores

    tok = RegexTokenizer()
    tok.train("some text to learn a few merges from\n" * 20, vocab_size=270)
    cores = available_cores()
    with pytest.warns(UserWarning, match=rf"threads {cores + 4} on {cores} cores: using {cores};"):
        engine = Engine(tiny_gpt(seed=1, vocab_size=300, T=16), tok, "t", threads=cores + 4)
    try:
        assert engine.threads == cores
        assert engine._worker.submit(torch.get_num_threads).result() == cores
    finally:
        engine.close()
    engine = Engine(tiny_gpt(seed=1, vocab_size=300, T=16), tok, "t", threads=1)
    try:
        assert engine.threads == 1
    finally:
        engine.close()


def test_completions_reuse_the_weights_laid_out_when_the_engine_started(
    client, engine, monkeypatch
):
    """The engine lays the weights out for one-token steps once (`generation_weights`), and
    every completion generates with that set instead of copying the weights again."""
    import mygpt2.serve.engine as engine_module

    given = []

    def spy(*args, **kwargs):
        given.append(kwargs.get("weights"))
        return generate_stream(*args, **kwargs)

    monkeypatch.setattr(engine_module, "generate_stream", spy)
    for seed in (1, 2):
        client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=3, seed=seed)
    assert len(given) == 2 and all(w is engine.weights for w in given)
    assert not engine.weights.stale(engine.model) and engine.weights.head is not None


def test_mygpt2_sample_lays_the_weights_out_once_for_all_samples(run_dir, monkeypatch):
    import mygpt2.sample as sample_module

    made, given = [], []
    real_weights, real_stream = sample_module.generation_weights, sample_module.generate_stream
    monkeypatch.setattr(
        sample_module, "generation_weights", lambda m: made.append(real_weights(m)) or made[-1]
    )
    monkeypatch.setattr(
        sample_module,
        "generate_stream",
        lambda *a, **k: given.append(k["weights"]) or real_stream(*a, **k),
    )
    texts, _ = sample_text(run_dir, "--num_samples=3", "--max_new_tokens=4")
    assert len(texts) == 3 and len(made) == 1 and all(w is made[0] for w in given)
    assert len(given) == 3
