"""Sampling: continue a start text from a checkpoint or GPT-2 weights, streaming as it goes.

`sample(cfg, write)` makes `num_samples` continuations, hands each piece of text to `write`
as soon as it is decoded (the command passes the terminal), and saves them all to
`out_dir/generated.txt`. The interactive prompt lives in `mygpt2.commands.sample`.

Design choices:
- A checkpoint names its tokenizer (the file it was trained with and that file's fingerprint);
  sampling refuses a different or missing tokenizer instead of decoding garbage.
- Text in a prompt that looks like a special token (`<|endoftext|>`) is ordinary text unless
  `--allow_special true`: a prompt should not be able to inject control tokens by accident.
- Streaming decodes through an incremental UTF-8 decoder, so a character split over two
  tokens is printed once it is complete.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mygpt2.checkpoint import load_model_and_tokenizer
from mygpt2.config import Config
from mygpt2.errors import MyGPT2Error
from mygpt2.fileio import atomic_write
from mygpt2.generate import GenerationWeights, generate_stream, generation_weights, steering_hooks
from mygpt2.model import GPT
from mygpt2.runtime import DtypeChoice, choose_dtype, pick_device
from mygpt2.sampling_settings import check_sampling
from mygpt2.tokenizer import RegexTokenizer


def weights_dtype(cfg: Config) -> DtypeChoice:
    """The dtype the weights are sampled in, and why (commands print it)."""
    return choose_dtype(cfg.run.dtype, pick_device(cfg.run.device), generation=True)


def load_model(cfg: Config) -> tuple[GPT, RegexTokenizer]:
    """The model (on `device`, in `dtype`, eval mode) and tokenizer to sample from."""
    model, tok = load_model_and_tokenizer(cfg)
    device = pick_device(cfg.run.device)
    return model.to(device=device, dtype=weights_dtype(cfg).dtype).eval(), tok


def encode_start(tok: RegexTokenizer, text: str, allow_special: bool) -> list[int]:
    """Prompt ids; empty text means the end-of-text token, i.e. 'start of a new document'.
    (A prompt longer than the context is cropped by `generate_stream`, with a warning.)"""
    if text == "":
        return [tok.eot_id]
    return tok.encode(text, allowed_special="all") if allow_special else tok.encode_ordinary(text)


def stream_text(
    model: GPT,
    tok,
    prompt_ids: list[int],
    cfg: Config,
    seed: int | None,
    write: Callable[[str], None],
    steer: Sequence[Any] = (),
    weights: GenerationWeights | None = None,
) -> tuple[str, int, float]:
    """Generate one continuation, passing text pieces to `write` as they are decoded.
    Returns (text, number of tokens, seconds). `steer` and `weights`: as `generate_stream`'s."""
    s = cfg.sample
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pieces, n, t0 = [], 0, time.perf_counter()
    for step in generate_stream(
        model,
        prompt_ids,
        s.max_new_tokens,
        temperature=s.temperature,
        top_k=s.top_k,  # 0 is off: generate_stream's check says so, for every caller
        top_p=s.top_p,
        seed=seed,
        stop_tokens=[tok.eot_id],
        steer=steer,
        weights=weights,
    ):
        token = int(step[0])
        if token < 0 or token == tok.eot_id:
            break
        n += 1
        piece = decoder.decode(tok.decode_bytes([token]))
        if piece:
            pieces.append(piece)
            write(piece)
    tail = decoder.decode(b"", final=True)
    if tail:
        pieces.append(tail)
        write(tail)
    return "".join(pieces), n, time.perf_counter() - t0


def read_start(start: str) -> str:
    """The start text: `start` itself, or the contents of the file named by `FILE:path`."""
    if not start.startswith("FILE:"):
        return start
    path = Path(start[5:])
    if not path.is_file():
        raise MyGPT2Error(f"start file '{path}' does not exist.")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise MyGPT2Error(
            f"start file '{path}' is not UTF-8 text (byte {e.start} is 0x{e.object[e.start]:02x}). "
            "Convert it to UTF-8, e.g. iconv -f latin1 -t utf-8."
        ) from None


@dataclass
class Samples:
    """What `sample` made: the texts (start included), tokens generated, seconds, output file."""

    texts: list[str]
    tokens: int
    seconds: float
    path: Path


def sample(
    cfg: Config, write: Callable[[str], None] = lambda piece: None, steer: Sequence[Any] = ()
) -> Samples:
    """Generate `num_samples` continuations of the start text, passing each piece of text to
    `write` as it is decoded (a header line opens each sample), and save them all to
    out_dir/generated.txt. `steer`: (sae, feature, alpha) entries, as `generate_stream`'s."""
    s = cfg.sample
    check_sampling(s.temperature, s.top_k, s.top_p)  # before loading any weights
    start = read_start(s.start)
    model, tok = load_model(cfg)
    if steer:
        steering_hooks(model, steer)  # checked against the model before anything is written
    prompt_ids = encode_start(tok, start, s.allow_special)
    weights = generation_weights(model)  # laid out once for every sample
    texts, total_tokens, total_time = [], 0, 0.0
    for i in range(s.num_samples):
        seed = cfg.run.seed + i
        write(f"--- sample {i + 1}/{s.num_samples} (seed {seed}) ---\n{start}")
        text, n, dt = stream_text(
            model, tok, prompt_ids, cfg, seed, write, steer=steer, weights=weights
        )
        write("\n")
        texts.append(start + text)
        total_tokens += n
        total_time += dt
    out = Path(cfg.run.out_dir) / "generated.txt"
    body = "".join(f"--- sample {i + 1} ---\n{t}\n" for i, t in enumerate(texts))
    atomic_write(out, lambda fh: fh.write(body.encode("utf-8")))
    return Samples(texts, total_tokens, total_time, out)
