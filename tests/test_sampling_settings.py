"""Sampling settings, checked once (`mygpt2.sampling_settings.check_sampling`) with one meaning
of "off", at every boundary and through every way in: the function, `generate()`, the config
(`mygpt2 sample` flags), and the server's completions parsing."""

from __future__ import annotations

import math

import pytest
import torch
from models import prompt_ids, tiny_gpt

from mygpt2.commands.args import load_config
from mygpt2.config import Config, validate
from mygpt2.errors import MyGPT2Error
from mygpt2.generate import check_sampling as check_from_generate, generate
from mygpt2.sampling_settings import Sampling, SamplingError, check_sampling
from mygpt2.serve.completions import APIError, Limits, parse_completion

V = 61  # tiny_gpt's vocabulary


# ------------------------------------------------------------------ the function itself


def test_generate_uses_the_same_function():
    assert check_from_generate is check_sampling


@pytest.mark.parametrize(
    ("top_k", "kept"),
    [(None, None), (0, None), (1, 1), (V - 1, V - 1), (V, None), (V + 1, None), (10**9, None)],
)
def test_top_k_boundaries(top_k, kept):
    """0 and None are off; k at or above the vocabulary keeps every token, so it is off too."""
    assert check_sampling(1.0, top_k, None, vocab_size=V).top_k == kept


def test_top_k_without_a_vocabulary_keeps_its_value():
    assert check_sampling(1.0, V + 1, None).top_k == V + 1


@pytest.mark.parametrize(("top_p", "kept"), [(None, None), (1.0, None), (1, None), (0.5, 0.5)])
def test_top_p_boundaries(top_p, kept):
    assert check_sampling(1.0, None, top_p).top_p == kept


@pytest.mark.parametrize(
    ("settings", "param", "code"),
    [
        ((1.0, -1, None), "top_k", "invalid_value"),
        ((1.0, 2.5, None), "top_k", "invalid_type"),
        ((1.0, True, None), "top_k", "invalid_type"),
        ((1.0, None, 0.0), "top_p", "invalid_value"),
        ((1.0, None, -0.2), "top_p", "invalid_value"),
        ((1.0, None, 1.0000001), "top_p", "invalid_value"),
        ((1.0, None, math.nan), "top_p", "invalid_value"),
        ((1.0, None, "0.9"), "top_p", "invalid_type"),
        ((-0.1, None, None), "temperature", "invalid_value"),
        ((-1e-12, None, None), "temperature", "invalid_value"),
        ((math.inf, None, None), "temperature", "invalid_value"),
        ((math.nan, None, None), "temperature", "invalid_value"),
        ((False, None, None), "temperature", "invalid_type"),
    ],
)
def test_out_of_range_settings_name_their_field(settings, param, code):
    with pytest.raises(SamplingError, match=param) as caught:
        check_sampling(*settings, vocab_size=V)
    assert (caught.value.param, caught.value.code) == (param, code)
    assert isinstance(caught.value, MyGPT2Error) and caught.value.exit_code == 2


def test_greedy_and_plain_settings_pass_through():
    assert check_sampling(0, 0, 1.0) == Sampling(0.0, None, None)
    assert check_sampling(0.7, 40, 0.9, vocab_size=V) == Sampling(0.7, 40, 0.9)


# ------------------------------------------------------------------ generate()


def draws(**kw) -> list[list[int]]:
    model = tiny_gpt(seed=3)
    prompts = [prompt_ids(V, 5, seed=s) for s in range(4)]
    return generate(model, prompts, 6, seed=11, **kw)


def test_generate_top_k_boundaries():
    """top_k 1 keeps only the most likely token: greedy whatever the temperature; 0, the
    vocabulary size and above keep every token: the same draws as no top-k at all."""
    greedy = draws(temperature=0)
    assert draws(temperature=1.5, top_k=1) == greedy
    free = draws(temperature=1.0)
    assert free != greedy  # the seed draws something else than greedy, so the next line bites
    for off in (0, V, V + 1):
        assert draws(temperature=1.0, top_k=off) == free, off


def test_generate_top_p_one_is_off_and_temperature_zero_is_argmax():
    assert draws(temperature=1.0, top_p=1.0) == draws(temperature=1.0)
    model = tiny_gpt(seed=3)
    ids = prompt_ids(V, 5, seed=0)
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids]))
    assert generate(model, ids, 1, temperature=0)[0] == [int(logits[0, -1, :V].argmax())]


@pytest.mark.parametrize(
    "kw",
    [
        dict(top_k=-1),
        dict(top_p=0.0),
        dict(top_p=1.5),
        dict(temperature=-0.5),
    ],
)
def test_generate_refuses_what_the_check_refuses(kw):
    with pytest.raises(SamplingError, match=next(iter(kw))):
        generate(tiny_gpt(), [1, 2], 3, **kw)


# ------------------------------------------------------------------ the config / `mygpt2 sample`


@pytest.mark.parametrize(
    ("flag", "param"),
    [
        ("--top_k=-1", "top_k"),
        ("--top_p=0", "top_p"),
        ("--top_p=1.5", "top_p"),
        ("--temperature=-1", "temperature"),
    ],
)
def test_the_config_refuses_bad_sampling_flags(flag, param):
    """`config.validate` calls the same check, so a flag fails before any weights load."""
    with pytest.raises(MyGPT2Error, match=f"^{param} must") as caught:
        load_config([flag])
    assert caught.value.exit_code == 2


def test_the_config_takes_the_off_values_and_its_defaults():
    cfg = load_config(["--top_k=0", "--top_p=1", "--temperature=0"])
    assert (cfg.sample.top_k, cfg.sample.top_p, cfg.sample.temperature) == (0, 1.0, 0.0)
    default = Config()
    validate(default)
    assert (default.sample.temperature, default.sample.top_k, default.sample.top_p) == (
        0.8,
        200,
        1.0,
    )


# ------------------------------------------------------------------ the server


def parse(**fields):
    return parse_completion({"prompt": "hi", **fields}, Limits(), vocab_size=V)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, (1.0, None, 1.0)),  # OpenAI's defaults: temperature 1, top_p 1, no top_k
        ({"temperature": None, "top_k": None, "top_p": None}, (1.0, None, 1.0)),
        ({"temperature": 0, "top_k": 0, "top_p": 1}, (0.0, None, 1.0)),
        ({"top_k": 1}, (1.0, 1, 1.0)),
        ({"top_k": V}, (1.0, None, 1.0)),
        ({"top_k": V + 1}, (1.0, None, 1.0)),
        ({"top_p": 0.25, "temperature": 250}, (250.0, None, 0.25)),
    ],
)
def test_the_server_takes_the_same_values(fields, expected):
    req = parse(**fields)
    assert (req.temperature, req.top_k, req.top_p) == expected


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        ({"top_k": -1}, "top_k", "invalid_value"),
        ({"top_k": 1.5}, "top_k", "invalid_type"),
        ({"top_p": 0}, "top_p", "invalid_value"),
        ({"top_p": 1.01}, "top_p", "invalid_value"),
        ({"temperature": -0.5}, "temperature", "invalid_value"),
        ({"temperature": "hot"}, "temperature", "invalid_type"),
        ({"temperature": True}, "temperature", "invalid_type"),
    ],
)
def test_the_server_answers_400_naming_the_field(fields, param, code):
    with pytest.raises(APIError) as caught:
        parse(**fields)
    err = caught.value
    assert (err.status, err.param, err.code) == (400, param, code)
    assert err.body()["error"]["message"].startswith(f"'{param}': {param} must")
