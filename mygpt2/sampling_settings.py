"""Sampling settings: the one check of temperature, top-k and top-p, and the one meaning of "off".

Every way in uses `check_sampling`: the config (`config.validate`, so `mygpt2 sample` and a TOML
file fail before any weights load), the interactive prompt's `/temp`, `/topk`, `/topp`,
`generate()` / `generate_stream()`, and the server's completions requests (its `param` becomes
the 400 answer's field). What it accepts, and what each value means:

- `temperature`: 0 is greedy (the most likely token); above 0 divides the logits. Negative,
  infinite or NaN is refused.
- `top_k`: 0 or None is off (every token stays); k keeps the k most likely. A k at or above
  the vocabulary size keeps every token, so it is off too (Hugging Face clamps k the same way):
  the config's default of 200 then works on a 257-token byte-level model. Negative is refused.
- `top_p`: 1.0 or None is off; p in (0, 1) keeps the smallest set of most likely tokens whose
  mass reaches p. 0 would keep nothing and is refused, as is anything above 1.

The check returns the settings with "off" always spelled None, so the decoding loop has one
case to test. It imports no torch: the config layer calls it, and `--help` stays fast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real

from mygpt2.errors import MyGPT2Error


class SamplingError(MyGPT2Error):
    """A sampling setting out of range; `param` names it (the server's 400 answer does too)."""

    def __init__(self, param: str, message: str, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.param, self.code = param, code


@dataclass(frozen=True)
class Sampling:
    """Checked sampling settings; None means off."""

    temperature: float  # 0: greedy
    top_k: int | None
    top_p: float | None


def _real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise SamplingError(
            name, f"{name} must be a number, got {type(value).__name__}.", "invalid_type"
        )
    value = float(value)
    if not math.isfinite(value):
        raise SamplingError(name, f"{name} must be a finite number, got {value}.")
    return value


def check_sampling(
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    vocab_size: int | None = None,
) -> Sampling:
    """The settings checked, with off spelled None; a `SamplingError` naming a bad one."""
    temperature = _real("temperature", temperature)
    if temperature < 0:
        raise SamplingError(
            "temperature", f"temperature must be 0 (greedy) or positive, got {temperature:g}."
        )
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, Integral):
            raise SamplingError(
                "top_k", f"top_k must be an integer, got {type(top_k).__name__}.", "invalid_type"
            )
        top_k = int(top_k)
        if top_k < 0:
            raise SamplingError(
                "top_k", f"top_k must be 0 (off) or a positive number of tokens, got {top_k}."
            )
        if top_k == 0 or (vocab_size is not None and top_k >= vocab_size):
            top_k = None
    if top_p is not None:
        top_p = _real("top_p", top_p)
        if not 0.0 < top_p <= 1.0:
            raise SamplingError("top_p", f"top_p must be in (0, 1] (1 is off), got {top_p:g}.")
        if top_p == 1.0:
            top_p = None
    return Sampling(temperature, top_k, top_p)
