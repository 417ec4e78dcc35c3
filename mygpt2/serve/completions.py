"""OpenAI's completions API as plain data: reading a request, shaping answers and errors.

Nothing here touches the model or the web framework: `parse_completion` turns a decoded JSON
body into a `CompletionRequest` or raises `APIError` (status, message, param, code), and the
`*_body` functions build the JSON objects that OpenAI's clients expect.

Choices made:
- Fields OpenAI does not have are refused (400, code `unknown_parameter`), as OpenAI does: a
  misspelt `max_token` would otherwise be ignored silently. The extensions are `top_k` and
  `steer` (SAE features added while sampling; its entries are checked here for their shape,
  against the server's SAEs and the model in `mygpt2.serve.features`).
- OpenAI fields this server cannot honour (`best_of`, penalties, `logit_bias`, `suffix`) are
  accepted at their neutral values and refused otherwise, never ignored. `user` is accepted
  and ignored; `model` names are not checked (the one loaded model answers).
- `n` counts choices per prompt; prompts times `n` must stay within `Limits.max_choices`.
- Every number is checked for its type: `true` is not an integer and `"5"` is not a number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from mygpt2.sampling_settings import SamplingError, check_sampling

# OpenAI's completions fields, each with the neutral value a request may give when this server
# does not implement it (None: implemented, any value that checks out is fine).
NEUTRAL = {"best_of": None, "frequency_penalty": 0, "presence_penalty": 0}
NEUTRAL |= {"logit_bias": {}, "suffix": None}
KNOWN = {"model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "n", "stream"}
KNOWN |= {"stream_options", "logprobs", "echo", "stop", "seed", "user", *NEUTRAL}
KNOWN |= {"steer"}  # extension: [{"sae": DIR, "feature": N, "alpha": X}, ...]
MAX_STEER = 16  # entries of one request's `steer`


@dataclass(frozen=True)
class Limits:
    """What one request may ask for: bounded so that no request can hold the model for long."""

    max_tokens: int = 1024  # new tokens per choice
    max_choices: int = 8  # prompts x n
    max_stop: int = 4  # stop sequences (OpenAI's limit)
    max_stop_chars: int = 64  # characters per stop sequence
    max_logprobs: int = 20  # alternatives per token (OpenAI allows 5)
    max_body_bytes: int = 1_000_000
    max_view_tokens: int = 128  # tokens the attention and lens views analyse


class APIError(Exception):
    """A request the server refuses, with the status and OpenAI's error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = (
            status,
            message,
            param,
            code,
            kind,
        )

    def body(self) -> dict[str, Any]:
        """OpenAI's error object: {"error": {"message", "type", "param", "code"}}."""
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }


@dataclass
class CompletionRequest:
    """A checked completions request. A prompt is text or token ids."""

    prompts: list[str | list[int]]
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    logprobs: int | None = None
    echo: bool = False
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    steer: list[tuple[str, int, float]] = field(default_factory=list)  # (sae, feature, alpha)


def _bad(param: str, message: str, code: str = "invalid_value") -> APIError:
    return APIError(400, f"'{param}': {message}", param=param, code=code)


def _integer(body: dict, name: str, default: int | None, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(name, f"expected an integer, got {json_type(value)}.", "invalid_type")
    if not low <= value <= high:
        raise _bad(name, f"{value} is out of range; it must be between {low} and {high}.")
    return value


def _flag(body: dict, name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _bad(name, f"expected true or false, got {json_type(value)}.", "invalid_type")
    return value


def json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _is_ids(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in value
    )


def parse_prompts(value: Any, vocab_size: int, eot_id: int | None) -> list[str | list[int]]:
    """`prompt` as OpenAI takes it: a string, a list of strings, a list of token ids, or a
    list of lists of token ids. Empty prompts and ids outside 0..vocab_size-1 are refused."""
    if value is None:
        raise _bad("prompt", "missing; give text or a list of token ids.", "missing_required")
    if isinstance(value, str) or (_is_ids(value) and value):
        prompts = [value]
    elif isinstance(value, list) and value and all(isinstance(p, str) for p in value):
        prompts = list(value)
    elif isinstance(value, list) and value and all(_is_ids(p) for p in value):
        prompts = [list(p) for p in value]
    elif value == []:
        prompts = [""]
    else:
        raise _bad(
            "prompt",
            "expected a string, a list of strings, a list of token ids or a list of lists of "
            f"token ids; got {json_type(value)} of another shape.",
            "invalid_type",
        )
    for i, p in enumerate(prompts):
        where = "" if len(prompts) == 1 else f" (prompt {i})"
        if len(p) == 0:
            start = "" if eot_id is None else f", or [{eot_id}] (the end-of-text token)"
            raise _bad("prompt", f"empty{where}; give some text{start} to start a new document.")
        if not isinstance(p, str):
            bad = [t for t in p if not 0 <= t < vocab_size]
            if bad:
                raise _bad(
                    "prompt",
                    f"token id {bad[0]}{where} is outside the vocabulary 0..{vocab_size - 1}.",
                )
        else:
            check_text(p, "prompt", where)
    return prompts


def check_text(text: str, param: str, where: str = "") -> None:
    """Refuse text holding a lone surrogate: JSON's `\\ud800` escapes decode to one, which is
    no text (it cannot be encoded, tokenized as it is, or sent back)."""
    lone = next((j for j, ch in enumerate(text) if "\ud800" <= ch <= "\udfff"), None)
    if lone is not None:
        raise _bad(
            param,
            f"character {lone}{where} is a lone surrogate (U+{ord(text[lone]):04X}), which is "
            "not text; send valid Unicode.",
        )


def sampling_fields(body: dict, vocab_size: int) -> tuple[float, float, int | None]:
    """`temperature`, `top_p`, `top_k` through the one check that `generate` and the config use
    (0 is greedy; top_k 0 and top_p 1 are off); its error becomes the 400 naming the field."""
    given = [body.get(name) for name in ("temperature", "top_k", "top_p")]
    temperature, top_k, top_p = (1.0 if given[0] is None else given[0]), given[1], given[2]
    try:
        s = check_sampling(temperature, top_k, top_p, vocab_size)
    except SamplingError as e:
        raise _bad(e.param, str(e), e.code) from None
    return s.temperature, 1.0 if s.top_p is None else s.top_p, s.top_k


def parse_stop(value: Any, limits: Limits) -> list[str]:
    """`stop`: null, a string, or a list of strings, within the limits."""
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise _bad("stop", "expected a string or a list of strings.", "invalid_type")
    if len(stops) > limits.max_stop:
        raise _bad("stop", f"{len(stops)} stop sequences; at most {limits.max_stop} are allowed.")
    for s in stops:
        if not s:
            raise _bad("stop", "a stop sequence is empty.")
        if len(s) > limits.max_stop_chars:
            raise _bad(
                "stop",
                f"a stop sequence is {len(s)} characters; at most {limits.max_stop_chars}.",
            )
    return stops


def parse_completion(
    body: Any, limits: Limits, vocab_size: int, eot_id: int | None = None
) -> CompletionRequest:
    """A checked request from a decoded JSON body, or an `APIError` naming the bad field."""
    if not isinstance(body, dict):
        raise APIError(
            400, f"the body must be a JSON object, got {json_type(body)}.", code="invalid_json"
        )
    unknown = sorted(set(body) - KNOWN)
    if unknown:
        raise _bad(unknown[0], "unrecognized request argument.", "unknown_parameter")
    for name, neutral in NEUTRAL.items():
        value = body.get(name)
        if (
            value is not None
            and value != neutral
            and not (name == "best_of" and value == body.get("n", 1))
        ):
            allowed = "null or the same as n" if name == "best_of" else f"{neutral!r} or null"
            raise _bad(name, f"not supported by this server (only {allowed}).", "unsupported")
    if body.get("model") is not None and not isinstance(body["model"], str):
        raise _bad("model", "expected a string.", "invalid_type")
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise _bad("user", "expected a string.", "invalid_type")
    req = CompletionRequest(prompts=parse_prompts(body.get("prompt"), vocab_size, eot_id))
    req.max_tokens = _integer(body, "max_tokens", 16, 0, limits.max_tokens)
    req.temperature, req.top_p, req.top_k = sampling_fields(body, vocab_size)
    req.n = _integer(body, "n", 1, 1, limits.max_choices)
    if len(req.prompts) * req.n > limits.max_choices:
        raise _bad(
            "n",
            f"{len(req.prompts)} prompts x n={req.n} asks for {len(req.prompts) * req.n} "
            f"completions; at most {limits.max_choices} per request.",
        )
    req.stream = _flag(body, "stream")
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict) or set(options) - {"include_usage"}:
            raise _bad("stream_options", 'expected {"include_usage": true|false}.', "invalid_type")
        if not req.stream:
            raise _bad("stream_options", "only allowed with stream: true.")
        req.include_usage = _flag(options, "include_usage")
    req.logprobs = _integer(body, "logprobs", None, 0, limits.max_logprobs)
    req.echo = _flag(body, "echo")
    req.stop = parse_stop(body.get("stop"), limits)
    req.seed = _integer(body, "seed", None, 0, 2**62)
    req.steer = parse_steer(body.get("steer"))
    return req


def parse_steer(value: Any) -> list[tuple[str, int, float]]:
    """The `steer` field as (sae name as sent, feature, alpha) triples, its shape checked."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise _bad("steer", f"expected a list of objects, got {json_type(value)}.", "invalid_type")
    if len(value) > MAX_STEER:
        raise _bad("steer", f"{len(value)} entries; at most {MAX_STEER}.")
    out = []
    for i, entry in enumerate(value):
        where = f"entry {i}"
        if not isinstance(entry, dict) or set(entry) - {"sae", "feature", "alpha"}:
            raise _bad(
                "steer",
                f'{where}: expected {{"sae": DIR, "feature": N, "alpha": X}}.',
                "invalid_type",
            )
        sae, feature, alpha = entry.get("sae"), entry.get("feature"), entry.get("alpha")
        if not isinstance(sae, str) or not sae:
            raise _bad("steer", f"{where}: 'sae' is an SAE's directory, got {json_type(sae)}.")
        if isinstance(feature, bool) or not isinstance(feature, int):
            raise _bad("steer", f"{where}: 'feature' is an integer, got {json_type(feature)}.")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
            raise _bad("steer", f"{where}: 'alpha' is a number, got {json_type(alpha)}.")
        if not math.isfinite(alpha):
            raise _bad("steer", f"{where}: 'alpha' must be finite.")
        out.append((sae, feature, float(alpha)))
    return out


# ---------------------------------------------------------------------------- answers
def logprobs_body(entries: list[dict[str, Any]]) -> dict[str, list]:
    """OpenAI's completions `logprobs` object from per-token entries (token, logprob, top,
    offset)."""
    return {
        "tokens": [e["token"] for e in entries],
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [e["top"] for e in entries],
        "text_offset": [e["offset"] for e in entries],
    }


def choice_body(
    index: int, text: str, entries: list[dict[str, Any]] | None, finish_reason: str | None
) -> dict[str, Any]:
    """One choice (a whole one, or one streamed piece of it)."""
    return {
        "text": text,
        "index": index,
        "logprobs": None if entries is None else logprobs_body(entries),
        "finish_reason": finish_reason,
    }


def usage_body(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_body(
    ident: str,
    created: int,
    model: str,
    choices: list[dict[str, Any]],
    usage: dict[str, int] | None,
) -> dict[str, Any]:
    """A completion object, or (with one piece in `choices` and no usage) a streamed chunk."""
    body = {
        "id": ident,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
    }
    if usage is not None:
        body["usage"] = usage
    return body


def model_body(model: str, created: int) -> dict[str, Any]:
    """GET /v1/models/{model}: OpenAI's model object."""
    return {"id": model, "object": "model", "created": created, "owned_by": "mygpt2"}


def models_body(model: str, created: int) -> dict[str, Any]:
    """GET /v1/models: the one model this server holds."""
    return {"object": "list", "data": [model_body(model, created)]}


def no_model(model: str) -> APIError:
    """OpenAI's answer to a model id it does not have (404, `model_not_found`)."""
    return APIError(
        404,
        f"The model '{model}' does not exist; this server holds one model, see GET /v1/models.",
        param="model",
        code="model_not_found",
    )
