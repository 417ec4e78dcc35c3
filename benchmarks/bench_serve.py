"""Serving under load: `mygpt2 serve`'s completions API with concurrent streaming clients on the
loopback address, against generating the same completions in-process (no server).

One server (`mygpt2.serve`, in this process, on 127.0.0.1 and a free port) holds a random
model of the chosen shape with GPT-2's tokenizer (from ../shared/data/gpt2.tiktoken; nothing
is downloaded). Then, for each shape:

1. reference: `generate_stream` in-process, the clients' requests one after another, as the
   server's worker runs them (same threads) -- tokens per second of the bare model;
2. load: `--clients` streaming clients at once, each asking for `--tokens` tokens with its own
   seed, and `--bad` malformed requests fired among them. Every stream must be intact (events
   parse, one finish reason, usage, `data: [DONE]` last) and correct (its text equals the
   reference's for that seed); every bad request must get a 4xx in OpenAI's error shape. The
   load test fails loudly otherwise.

It prints tokens per second for both, their ratio (the cost of the HTTP server, JSON, SSE and
the queue), and time to first token (the last client waits for all the others: requests are
served one at a time, first come first served).

    python benchmarks/bench_serve.py                      # small shape, 16 clients x 64 tokens
    python benchmarks/bench_serve.py --shapes small 124M
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
from pathlib import Path

import httpx
import torch

from mygpt2.config import ModelConfig
from mygpt2.generate import generate_stream
from mygpt2.model import GPT
from mygpt2.serve.app import Background, create_app
from mygpt2.serve.engine import Engine
from mygpt2.tokenizer import RegexTokenizer

SHAPES = {
    "small": dict(n_layers=4, n_heads=4, n_emb=128),
    "124M": dict(n_layers=12, n_heads=12, n_emb=768),
}
TIKTOKEN = Path(__file__).resolve().parents[2] / "shared" / "data" / "gpt2.tiktoken"
PROMPT = "The meaning of life is"
SETTINGS = {"temperature": 0.8, "top_k": 40}
BAD = [  # each must be refused with a 4xx and OpenAI's error object
    {"prompt": PROMPT, "max_tokens": -1},
    {"prompt": PROMPT, "n": 99},
    {"prompt": "", "max_tokens": 4},
    {"prompt": [50257 * 2], "max_tokens": 4},
    {"prompt": PROMPT, "stop": ["a", "b", "c", "d", "e"]},
    {"prompt": PROMPT, "temperature": "hot"},
    {"prompt": PROMPT, "max_tokenz": 4},
    "not an object",
]


def reference(engine: Engine, clients: int, tokens: int) -> tuple[list[str], float]:
    """Each client's text made in-process on the server's worker thread, and tokens/s."""

    def run() -> tuple[list[str], float]:
        ids = engine.tok.encode_ordinary(PROMPT)
        for _ in generate_stream(engine.model, ids, 8):  # warm-up
            pass
        texts, count, t0 = [], 0, time.perf_counter()
        for seed in range(clients):
            out = bytearray()
            for step in generate_stream(
                engine.model, ids, tokens, seed=seed, stop_tokens=[engine.eot_id], **SETTINGS
            ):
                token = int(step[0])
                if token < 0 or token == engine.eot_id:
                    break
                out += engine.token_bytes(token)
                count += 1
            texts.append(out.decode("utf-8", errors="replace"))
        return texts, count / (time.perf_counter() - t0)

    return engine._worker.submit(run).result()


async def one_stream(client: httpx.AsyncClient, seed: int, tokens: int) -> dict:
    body = {"prompt": PROMPT, "max_tokens": tokens, "stream": True, "seed": seed}
    body |= {**SETTINGS, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    first, pieces, finish, usage, events = None, [], [], None, []
    async with client.stream("POST", "/v1/completions", json=body) as response:
        if response.status_code != 200:
            raise AssertionError(f"seed {seed}: HTTP {response.status_code}")
        async for line in response.aiter_lines():
            if not line:
                continue
            events.append(line)
            if not line.startswith("data: "):
                raise AssertionError(f"seed {seed}: not an event: {line!r}")
            if line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk["choices"]:
                first = first or time.perf_counter() - t0
                pieces.append(choice["text"])
                if choice["finish_reason"]:
                    finish.append(choice["finish_reason"])
    if events[-1] != "data: [DONE]" or len(finish) != 1 or usage is None:
        raise AssertionError(f"seed {seed}: stream not intact (last {events[-1]!r}, {finish})")
    return {"text": "".join(pieces), "usage": usage, "first": first}


async def one_bad(client: httpx.AsyncClient, body) -> None:
    response = await client.post("/v1/completions", json=body)
    error = response.json().get("error", {})
    if not 400 <= response.status_code < 500 or set(error) != {"message", "type", "param", "code"}:
        raise AssertionError(f"bad request {body!r}: {response.status_code} {response.text[:200]}")


async def load(url: str, clients: int, tokens: int) -> tuple[list[dict], float]:
    limits = httpx.Limits(max_connections=clients + len(BAD))
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        t0 = time.perf_counter()
        good = [asyncio.create_task(one_stream(client, seed, tokens)) for seed in range(clients)]
        bad = []
        for body in BAD:  # fired while the streams are queued and running
            await asyncio.sleep(0.01)
            bad.append(asyncio.create_task(one_bad(client, body)))
        results = await asyncio.gather(*good)
        await asyncio.gather(*bad)
        return results, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=["small"], choices=list(SHAPES))
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="model threads (0: cores - 1)")
    args = parser.parse_args()
    if not TIKTOKEN.is_file():
        raise SystemExit(f"needs GPT-2's tokenizer file at {TIKTOKEN}")
    tok = RegexTokenizer.from_tiktoken_file(TIKTOKEN)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads; {args.clients} streaming clients x "
          f"{args.tokens} tokens, {len(BAD)} bad requests among them")  # fmt: skip
    for name in args.shapes:
        torch.manual_seed(0)
        model = GPT(ModelConfig(**SHAPES[name], T=1024, vocab_size=tok.vocab_size)).eval()
        engine = Engine(model, tok, name, threads=args.threads or None)
        expected, direct = reference(engine, args.clients, args.tokens)
        with Background(create_app(engine)) as server:
            results, seconds = asyncio.run(load(server.url, args.clients, args.tokens))
        engine.close()
        wrong = [i for i, r in enumerate(results) if r["text"] != expected[i]]
        if wrong:
            raise AssertionError(f"{name}: streams {wrong} differ from the in-process reference")
        generated = sum(r["usage"]["completion_tokens"] for r in results)
        served = generated / seconds
        firsts = sorted(r["first"] for r in results)
        print(
            f"{name:>6}: served {served:7.1f} tokens/s ({generated} tokens in {seconds:.2f} s), "
            f"in-process {direct:7.1f} tokens/s, ratio {served / direct:.2f}; first token "
            f"after {firsts[0]:.2f} s (first client) to {firsts[-1]:.2f} s (last); "
            f"all {len(results)} streams intact and equal to the reference, "
            f"{len(BAD)} bad requests refused"
        )


if __name__ == "__main__":
    main()
