"""Sampling: continue a start text from a checkpoint or GPT-2 weights, streaming as it goes.

`mygpt2 sample` / `run_pretrained.py` writes `num_samples` continuations to the terminal, token
by token, and to `out_dir/generated.txt`. With `--prompt` it becomes an interactive loop:
type a prompt, watch the continuation stream, change settings with `/temp 0.7`, `/topk 40`,
`/topp 0.9`, `/len 200`, `/seed 1`; Ctrl-C stops a generation, Ctrl-D or `/quit` leaves.

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
import contextlib
import sys
import time
from collections.abc import Callable
from pathlib import Path

from mygpt2.checkpoint import load_model_and_tokenizer
from mygpt2.config import Config
from mygpt2.errors import MyGPT2Error
from mygpt2.fileio import atomic_write
from mygpt2.generate import check_sampling, generate_stream
from mygpt2.model import GPT
from mygpt2.runtime import pick_device, pick_dtype
from mygpt2.tokenizer import RegexTokenizer


def load_model(cfg: Config) -> tuple[GPT, RegexTokenizer]:
    """The model (on `device`, in `dtype`, eval mode) and tokenizer to sample from."""
    model, tok = load_model_and_tokenizer(cfg)
    device = pick_device(cfg.run.device)
    return model.to(device=device, dtype=pick_dtype(cfg.run.dtype, device)).eval(), tok


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
) -> tuple[str, int, float]:
    """Generate one continuation, passing text pieces to `write` as they are decoded.
    Returns (text, number of tokens, seconds)."""
    s = cfg.sample
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pieces, n, t0 = [], 0, time.perf_counter()
    for step in generate_stream(
        model,
        prompt_ids,
        s.max_new_tokens,
        temperature=s.temperature,
        top_k=s.top_k or None,
        top_p=s.top_p,
        seed=seed,
        stop_tokens=[tok.eot_id],
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


def _stdout(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


def sample(cfg: Config) -> list[str]:
    """Write `num_samples` continuations to stdout (streaming) and out_dir/generated.txt."""
    s = cfg.sample
    check_sampling(s.temperature, s.top_k or None, s.top_p)
    model, tok = load_model(cfg)
    start = s.start
    if start.startswith("FILE:"):
        path = Path(start[5:])
        if not path.is_file():
            raise MyGPT2Error(f"start file '{path}' does not exist.")
        start = path.read_text(encoding="utf-8")
    prompt_ids = encode_start(tok, start, s.allow_special)
    texts, total_tokens, total_time = [], 0, 0.0
    for i in range(s.num_samples):
        seed = cfg.run.seed + i
        header = f"--- sample {i + 1}/{s.num_samples} (seed {seed}) ---\n"
        _stdout(header + (start if start else ""))
        text, n, dt = stream_text(model, tok, prompt_ids, cfg, seed, _stdout)
        _stdout("\n")
        texts.append(start + text)
        total_tokens += n
        total_time += dt
    out = Path(cfg.run.out_dir) / "generated.txt"
    body = "".join(f"--- sample {i + 1} ---\n{t}\n" for i, t in enumerate(texts))
    atomic_write(out, lambda fh: fh.write(body.encode("utf-8")))
    rate = total_tokens / total_time if total_time > 0 else float("nan")
    print(
        f"\n{total_tokens} tokens in {total_time:.2f}s ({rate:,.1f} tokens/s); written to '{out}'.",
        file=sys.stderr,
    )
    return texts


HELP = """commands:
  /temp X    temperature (0 = greedy)      /topk N   top-k (0 = off)
  /topp X    nucleus probability (0, 1]    /len N    tokens to generate
  /seed N    random seed                   /show     current settings
  /help      this text                     /quit     leave (or Ctrl-D)
Ctrl-C stops the current generation."""

SETTINGS = {  # command -> (config field, type)
    "/temp": ("temperature", float),
    "/topk": ("top_k", int),
    "/topp": ("top_p", float),
    "/len": ("max_new_tokens", int),
    "/seed": ("seed", int),
}


def interactive(cfg: Config, input_fn: Callable[[str], str] = input) -> None:
    """Read a prompt, stream the continuation, repeat; settings change with /commands."""
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  (line editing and history for input())
    model, tok = load_model(cfg)
    s = cfg.sample
    print(
        f"mygpt2 interactive: {model.num_params() / 1e6:.1f}M parameters, tokenizer "
        f"{tok.name}. Type a prompt; /help for commands.",
        flush=True,
    )
    while True:
        try:
            line = input_fn(">>> ")
        except EOFError:
            print("\nbye", flush=True)
            return
        except KeyboardInterrupt:
            print(flush=True)
            continue
        if line.strip().startswith("/"):
            word, _, arg = line.strip().partition(" ")
            if word in ("/quit", "/exit"):
                print("bye", flush=True)
                return
            if word == "/help":
                print(HELP, flush=True)
            elif word == "/show":
                print(
                    f"temp {s.temperature} | topk {s.top_k} | topp {s.top_p} | len "
                    f"{s.max_new_tokens} | seed {cfg.run.seed}",
                    flush=True,
                )
            elif word in SETTINGS:
                name, typ = SETTINGS[word]
                try:
                    value = typ(arg)
                    target = cfg.train if name == "seed" else s
                    old = getattr(target, name)
                    setattr(target, name, value)
                    try:
                        check_sampling(s.temperature, s.top_k or None, s.top_p)
                        if s.max_new_tokens < 0:
                            raise MyGPT2Error("length must be 0 or more.")
                    except MyGPT2Error:
                        setattr(target, name, old)
                        raise
                    print(f"{name} = {value}", flush=True)
                except (ValueError, MyGPT2Error) as e:
                    print(f"could not set {name} to {arg!r}: {e}", flush=True)
            else:
                print(f"unknown command {word}; /help lists them.", flush=True)
            continue
        if not line:
            continue
        try:
            prompt_ids = encode_start(tok, line, s.allow_special)
            _stdout(line)
            _, n, dt = stream_text(model, tok, prompt_ids, cfg, cfg.run.seed, _stdout)
            print(f"\n[{n} tokens, {n / dt if dt > 0 else 0:,.1f} tokens/s]", flush=True)
        except KeyboardInterrupt:
            print("\n[stopped]", flush=True)
