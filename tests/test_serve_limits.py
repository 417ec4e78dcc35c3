"""mygpt2 serve's documented defaults and limits, each pinned at its edge: a value exactly at a
limit is accepted and one past it refused, and a field left out acts as its documented default
(OpenAI's, where OpenAI has one: `max_tokens` 16, `n` 1, `temperature` and `top_p` 1).

The server here runs with small limits (so the edges are cheap to reach) on the random model
of tests/test_serve.py; the defaults of `Limits` and of the command are held against the
numbers docs/SERVE.md gives.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from test_serve import PROMPT, Slow, assert_openai_error, make_checkpoint  # noqa: E402

from mygpt2.cli import main  # noqa: E402
from mygpt2.commands.args import load_config  # noqa: E402
from mygpt2.sample import load_model  # noqa: E402
from mygpt2.serve.app import Background, create_app  # noqa: E402
from mygpt2.serve.completions import Limits  # noqa: E402
from mygpt2.serve.engine import Engine  # noqa: E402

SMALL = Limits(
    max_tokens=40,
    max_choices=4,
    max_stop=4,
    max_stop_chars=64,
    max_logprobs=20,
    max_body_bytes=400,
    max_view_tokens=5,
)
VOCAB = 280  # make_checkpoint's tokenizer
T = 64


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("limits"))


@pytest.fixture(scope="module")
def engine(run_dir):
    model, tok = load_model(load_config([f"--out_dir={run_dir}", "--device=cpu"]))
    engine = Engine(model, tok, "tiny", SMALL)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def url(engine):
    with Background(create_app(engine)) as running:
        yield running.url


def post(url: str, body: dict, route: str = "/v1/completions") -> httpx.Response:
    return httpx.post(url + route, json=body, timeout=60)


def ok(url: str, body: dict) -> dict:
    response = post(url, body)
    assert response.status_code == 200, response.text
    return response.json()


def refused(url: str, body: dict, param: str, code: str = "invalid_value") -> None:
    error = assert_openai_error(post(url, body), 400)
    assert (error["param"], error["code"]) == (param, code)


# ---------------------------------------------------------------------------- defaults


def test_the_documented_limits_are_the_defaults():
    """docs/SERVE.md's numbers: --max_tokens 1024, --max_choices 8, 4 stop sequences of 64
    characters, logprobs up to 20, bodies up to 1 MB, views of 128 tokens."""
    assert dataclasses.asdict(Limits()) == {
        "max_tokens": 1024,
        "max_choices": 8,
        "max_stop": 4,
        "max_stop_chars": 64,
        "max_logprobs": 20,
        "max_body_bytes": 1_000_000,
        "max_view_tokens": 128,
    }


def test_max_tokens_defaults_to_openais_16(url, engine):
    with Slow(engine, 0.0):  # the end-of-text token is never chosen: only the count ends it
        got = ok(url, {"prompt": PROMPT, "seed": 4})
        same = ok(url, {"prompt": PROMPT, "seed": 4, "max_tokens": 16})
    assert got["usage"]["completion_tokens"] == 16
    assert got["choices"][0]["finish_reason"] == "length"
    assert got["choices"][0]["text"] == same["choices"][0]["text"]


def test_left_out_fields_act_as_their_documented_defaults(url):
    """n 1, temperature 1, top_p 1, no top-k, no logprobs, no echo, no stop, not streamed."""
    base = {"prompt": PROMPT, "max_tokens": 12, "seed": 9}
    got = ok(url, base)
    explicit = ok(url, {**base, "n": 1, "temperature": 1, "top_p": 1, "echo": False,
                        "stream": False, "stop": None, "logprobs": None})  # fmt: skip
    assert got["choices"] == explicit["choices"]
    assert len(got["choices"]) == 1 and got["choices"][0]["logprobs"] is None
    echoed = ok(url, {**base, "echo": True})["choices"][0]["text"]
    assert echoed == PROMPT + got["choices"][0]["text"]  # without echo, no prompt in the text
    greedy = ok(url, {**base, "temperature": 0})["choices"][0]["text"]
    assert got["choices"][0]["text"] != greedy  # temperature 1 samples: it is not greedy


def test_neutral_values_of_unsupported_fields_are_accepted(url):
    base = {"prompt": PROMPT, "max_tokens": 3, "seed": 1, "n": 2}
    neutral = {"best_of": 2, "frequency_penalty": 0, "presence_penalty": 0.0,
               "logit_bias": {}, "suffix": None, "user": "someone", "model": "any name"}  # fmt: skip
    assert ok(url, {**base, **neutral})["choices"] == ok(url, base)["choices"]
    refused(url, {**base, "best_of": 3}, "best_of", "unsupported")
    refused(url, {**base, "presence_penalty": 0.1}, "presence_penalty", "unsupported")
    refused(url, {**base, "logit_bias": {"5": 1}}, "logit_bias", "unsupported")
    refused(url, {**base, "suffix": "x"}, "suffix", "unsupported")


# ---------------------------------------------------------------------------- limits at the edge


def test_max_tokens_from_0_to_the_limit(url, engine):
    with Slow(engine, 0.0):
        at_limit = ok(url, {"prompt": PROMPT, "max_tokens": SMALL.max_tokens})
    assert at_limit["usage"]["completion_tokens"] == SMALL.max_tokens
    zero = ok(url, {"prompt": PROMPT, "max_tokens": 0})
    assert zero["choices"][0]["text"] == "" and zero["usage"]["completion_tokens"] == 0
    refused(url, {"prompt": PROMPT, "max_tokens": SMALL.max_tokens + 1}, "max_tokens")
    refused(url, {"prompt": PROMPT, "max_tokens": -1}, "max_tokens")


@pytest.mark.parametrize(
    ("prompts", "n", "accepted"),
    [(1, 4, True), (2, 2, True), (4, 1, True), (1, 5, False), (5, 1, False), (2, 3, False),
     (3, 2, False)],
)  # fmt: skip
def test_prompts_times_n_up_to_the_limit(url, prompts, n, accepted):
    body = {"prompt": [PROMPT] * prompts, "n": n, "max_tokens": 1, "seed": 0}
    if accepted:
        got = ok(url, body)
        assert [c["index"] for c in got["choices"]] == list(range(prompts * n))
    else:
        refused(url, body, "n")


def test_stop_sequences_up_to_4_of_up_to_64_characters(url):
    base = {"prompt": PROMPT, "max_tokens": 2}
    ok(url, {**base, "stop": ["a", "b", "c", "d"]})
    ok(url, {**base, "stop": "s" * 64})
    refused(url, {**base, "stop": ["a", "b", "c", "d", "e"]}, "stop")
    refused(url, {**base, "stop": ["a", "s" * 65]}, "stop")


def test_logprobs_from_0_to_20(url):
    base = {"prompt": PROMPT, "max_tokens": 2, "temperature": 0}
    twenty = ok(url, {**base, "logprobs": 20})["choices"][0]["logprobs"]
    assert [len(top) for top in twenty["top_logprobs"]] == [20] * len(twenty["tokens"])
    none = ok(url, {**base, "logprobs": 0})["choices"][0]["logprobs"]
    assert none["top_logprobs"] == [{}] * len(none["tokens"]) and none["token_logprobs"]
    refused(url, {**base, "logprobs": 21}, "logprobs")
    refused(url, {**base, "logprobs": -1}, "logprobs")


def test_prompts_up_to_the_context_length_and_ids_inside_the_vocabulary(url, engine):
    ok(url, {"prompt": [VOCAB - 1] * T, "max_tokens": 1})
    ok(url, {"prompt": [0], "max_tokens": 1})
    refused(url, {"prompt": [1] * (T + 1), "max_tokens": 1}, "prompt", "context_length_exceeded")
    refused(url, {"prompt": [VOCAB], "max_tokens": 1}, "prompt")
    refused(url, {"prompt": [-1], "max_tokens": 1}, "prompt")
    text = "ab " * 100
    ids = engine.tok.encode_ordinary(text)
    fits = engine.tok.decode(ids[:T])
    assert len(engine.tok.encode_ordinary(fits)) == T
    ok(url, {"prompt": fits, "max_tokens": 1})
    refused(url, {"prompt": text, "max_tokens": 1}, "prompt", "context_length_exceeded")


def test_seed_from_0_to_2_to_the_62(url):
    base = {"prompt": PROMPT, "max_tokens": 3}
    assert ok(url, {**base, "seed": 0}) and ok(url, {**base, "seed": 2**62})
    refused(url, {**base, "seed": -1}, "seed")
    refused(url, {**base, "seed": 2**62 + 1}, "seed")


def test_body_size_up_to_the_limit(url):
    body = json.dumps({"prompt": "a", "max_tokens": 1}).encode()
    headers = {"Content-Type": "application/json"}
    exact = body + b" " * (SMALL.max_body_bytes - len(body))  # JSON may end in blanks
    assert httpx.post(url + "/v1/completions", content=exact, headers=headers).status_code == 200
    over = exact + b" "
    response = httpx.post(url + "/v1/completions", content=over, headers=headers)
    assert assert_openai_error(response, 413)["code"] == "too_large"


def test_views_read_up_to_max_view_tokens(url, engine):
    text = "héllo there, friend! wörld"
    ids = engine.tok.encode_ordinary(text)
    assert len(ids) > SMALL.max_view_tokens
    exact = engine.tok.decode(ids[: SMALL.max_view_tokens])
    for route in ("/api/attention", "/api/lens"):
        long = post(url, {"text": text}, route).json()
        assert long["truncated"] and len(long["tokens"]) == SMALL.max_view_tokens
        short = post(url, {"text": exact}, route).json()
        assert not short["truncated"] and len(short["tokens"]) == SMALL.max_view_tokens
    tokens = post(url, {"text": text}, "/api/tokens").json()  # the tokens view reads T
    assert not tokens["truncated"] and len(tokens["tokens"]) == len(ids)


def test_command_limit_flags_and_their_ranges(run_dir, capsys):
    for flag, bad in (("--max_tokens", "0"), ("--max_choices", "0"), ("--max_choices", "1025")):
        assert main(["serve", f"--out_dir={run_dir}", flag, bad]) == 2
        assert f"{flag} takes a whole number from 1 to" in capsys.readouterr().err
