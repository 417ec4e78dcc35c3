"""The one model a server holds, and the queue in front of it.

Every use of the model (a completion, a page's token, attention or lens view) is a job that
runs on one worker thread, so the event loop keeps answering (bad requests, the page, other
clients) while a job computes. Jobs take an `asyncio.Lock` first: its waiters are woken in the
order they came, so requests are served one at a time, first come first served. A job checks a
`threading.Event` between tokens; a client that disconnects sets it and its job ends at the
next token. The worker pool has one thread, so even a job that is still finishing its last
token when its client leaves never overlaps the next one.

Completions go through `mygpt2.generate.generate_stream` with the settings `mygpt2 sample`
uses (same model loading, same prompt encoding, the end-of-text token stops a choice, choice
`i` is seeded `seed + i`), so the two agree token for token. Log-probabilities are read from
the model's own output at each step (a forward hook), before temperature, top-k or top-p.
A request's `steer` entries (`mygpt2.serve.features`) go to `generate_stream`'s `steer`.
The end-of-text token that ends a choice adds no text but is a generated token like the others:
it has its log-probability entry (`<|endoftext|>`, at the text's end) and counts in `usage`,
as vLLM counts it. lm-evaluation-harness scores a continuation with `max_tokens=1, echo=true`
and drops the last entry as the generated token's: without this entry, it would drop the
continuation's last token instead whenever the model's next token is end-of-text.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import contextlib
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from mygpt2.errors import MyGPT2Error
from mygpt2.generate import generate_stream, generation_weights
from mygpt2.inspect import attention, logit_lens
from mygpt2.model import GPT
from mygpt2.runtime import threads_within_cores
from mygpt2.serve.completions import APIError, CompletionRequest, Limits
from mygpt2.serve.features import SAEs, resolve_steer
from mygpt2.tokenizer import RegexTokenizer


@dataclass
class Piece:
    """A part of one choice's text, with the log-probability entries of its tokens (when
    asked for); the last piece of a choice has its finish reason and token count."""

    index: int
    text: str
    entries: list[dict[str, Any]] | None = None
    finish_reason: str | None = None
    generated: int = 0


class _End:
    pass


@dataclass
class _Failed:
    error: BaseException


@contextlib.contextmanager
def last_logits(model: GPT) -> Iterator[dict[str, torch.Tensor]]:
    """The last position's logits of every forward pass while inside, in `box["logits"]`:
    the distribution each generated token was drawn from, without a second forward pass."""
    box: dict[str, torch.Tensor] = {}

    def keep(module: torch.nn.Module, args: Any, output: Any) -> None:
        box["logits"] = output[0][0, -1]

    handle = model.register_forward_hook(keep)
    try:
        yield box
    finally:
        handle.remove()


def stop_position(text: str, stops: list[str], start: int) -> int | None:
    """Where the first stop sequence begins in text[start:], or None."""
    found = [i for s in stops if (i := text.find(s, start)) >= 0]
    return min(found) if found else None


def held_back(text: str, stops: list[str]) -> int:
    """How many characters at the end of `text` could begin a stop sequence (not sent yet)."""
    return max(
        (n for s in stops for n in range(1, len(s)) if text.endswith(s[:n])),
        default=0,
    )


class Engine:
    """A model and its tokenizer behind a first-come-first-served queue."""

    def __init__(
        self,
        model: GPT,
        tok: RegexTokenizer,
        name: str,
        limits: Limits | None = None,
        threads: int | None = None,
        saes: SAEs | None = None,
    ):
        self.model, self.tok, self.name = model.eval(), tok, name
        self.saes = saes  # SAEs completions may steer with, and the Features tab's reports
        self.limits = limits or Limits()
        self.T = model.config.T
        # ids past the tokenizer's are padding of the model's vocabulary: no text, no prompt
        self.vocab_size = min(model.config.vocab_size, tok.vocab_size)
        try:
            self.eot_id: int | None = tok.eot_id
        except MyGPT2Error:
            self.eot_id = None
        tok.encode_ordinary("warm")  # builds the encoder once, before threads share it
        self.device = model.transformer.wte.weight.device
        # the weights laid out for one-token steps once, not per completion (0.2 s at 124M)
        self.weights = generation_weights(model)
        self.stats: Counter[str] = Counter()  # completed, cancelled, tokens: for tests and logs
        # PyTorch's intra-op threads spin while they wait; with as many of them as cores, the
        # event loop (woken at every token) waits for a core, and a 60-token answer measured
        # 10x slower on 2 busy cores. One core is left to the loop unless `threads` says.
        # (The setting is per thread with OpenMP: the rest of the process keeps its own.)
        self.threads = (
            threads_within_cores(threads, "threads")
            if threads
            else max(1, torch.get_num_threads() - 1)
        )
        self._worker = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="mygpt2-model",
            initializer=torch.set_num_threads,
            initargs=(self.threads,),
        )
        self._lock: asyncio.Lock | None = None

    def close(self) -> None:
        self._worker.shutdown(wait=True, cancel_futures=True)

    # ---- the queue -----------------------------------------------------------------------
    async def _jobs(
        self, job: Callable[[Callable[[Any], None], threading.Event], None]
    ) -> AsyncIterator[Any]:
        """Run `job(put, stop)` on the worker in turn, yielding what it `put`s as it comes."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()

        def put(item: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed under us: nobody listens
                loop.call_soon_threadsafe(queue.put_nowait, item)

        def work() -> None:
            if stop.is_set():
                return
            try:
                job(put, stop)
                put(_End())
            except BaseException as e:  # handed to the awaiting request, raised there
                put(_Failed(e))

        async with self._lock:
            loop.run_in_executor(self._worker, work)
            try:
                while not isinstance(item := await queue.get(), _End):
                    if isinstance(item, _Failed):
                        raise item.error
                    yield item
            finally:
                stop.set()  # a client that left, or a failure: the job stops at its next token

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` on the worker, in turn with every other job."""
        async with contextlib.aclosing(self._jobs(lambda put, stop: put(fn(*args)))) as results:
            async for result in results:
                return result
        raise AssertionError("unreachable: a job puts one result")

    # ---- tokens --------------------------------------------------------------------------
    def token_bytes(self, i: int) -> bytes:
        return self.tok.token_bytes(i) if i < self.vocab_size else b""

    def token_str(self, i: int) -> str:
        """A token as OpenAI shows one: its text, or `bytes:\\xNN` when it is not whole UTF-8."""
        raw = self.token_bytes(i)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)

    def encode(self, prompts: list[str | list[int]]) -> list[list[int]]:
        """Token ids of each prompt (text as `mygpt2 sample` encodes it), at most T of them."""
        out = [p if isinstance(p, list) else self.tok.encode_ordinary(p) for p in prompts]
        for i, ids in enumerate(out):
            if len(ids) > self.T:
                where = "the prompt" if len(out) == 1 else f"prompt {i}"
                raise APIError(
                    400,
                    f"{where} is {len(ids)} tokens; this model's context length is {self.T}. "
                    "Shorten it.",
                    param="prompt",
                    code="context_length_exceeded",
                )
        return out

    def _entry(self, logits: torch.Tensor, token: int, k: int, offset: int) -> dict[str, Any]:
        logp = logits.float().log_softmax(-1)
        top = logp.topk(k) if k else None
        return {
            "token": self.token_str(token),
            "logprob": float(logp[token]),
            "top": {}
            if top is None
            else {
                self.token_str(i): float(v)
                for v, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
            },
            "offset": offset,
        }

    @torch.inference_mode()
    def _prompt_entries(self, ids: list[int], k: int) -> list[dict[str, Any]]:
        """Log-probability entries of the prompt's tokens (the first has none), for echo."""
        logits, _ = self.model(torch.tensor([ids], device=self.device))
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        entries, offset = [], 0
        for pos, token in enumerate(ids):
            if pos == 0:
                entry = {"token": self.token_str(token), "logprob": None, "top": None}
                entry["offset"] = 0
            else:
                entry = self._entry(logits[0, pos - 1], token, k, offset)
            entries.append(entry)
            offset += len(decoder.decode(self.token_bytes(token)))
        return entries

    # ---- completions ---------------------------------------------------------------------
    def complete(self, req: CompletionRequest, prompt_ids: list[list[int]]) -> AsyncIterator[Piece]:
        """Every choice of a request as pieces of text, in choice order, once it is this
        request's turn. Closing the iterator early (`contextlib.aclosing`) stops the
        generation at its next token."""

        def job(put: Callable[[Any], None], stop: threading.Event) -> None:
            index = 0
            for prompt, ids in zip(req.prompts, prompt_ids, strict=True):
                text = prompt if isinstance(prompt, str) else self.tok.decode(ids)
                for j in range(req.n):
                    seed = None if req.seed is None else req.seed + j
                    self._choice(index, ids, text, req, seed, put, stop)
                    index += 1
                    if stop.is_set():
                        self.stats["cancelled"] += 1
                        return
            self.stats["completed"] += 1

        return self._jobs(job)

    def _choice(
        self,
        index: int,
        ids: list[int],
        prompt_text: str,
        req: CompletionRequest,
        seed: int | None,
        put: Callable[[Piece], None],
        stop: threading.Event,
    ) -> None:
        """Generate one choice, putting pieces as soon as no stop sequence can still hide in
        them; each piece holds whole tokens (a stop sequence cuts its last token's text)."""
        k = req.logprobs
        if req.echo:
            put(Piece(index, prompt_text, self._prompt_entries(ids, k) if k is not None else None))
        base = len(prompt_text)  # OpenAI's text offsets count from the prompt's start
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        text, tokens = "", []  # tokens not sent yet: (start, end, entry)
        sent, generated, finish = 0, 0, "length"
        end: dict[str, Any] | None = None  # the end-of-text token's entry, when it ends the text

        def send(going: int, upto: int, finish_reason: str | None = None) -> None:
            """Put the next `going` tokens, whose text ends at `upto`."""
            nonlocal sent, tokens
            if going == 0 and finish_reason is None:
                return
            entries = None if k is None else [t[2] for t in tokens[:going]]
            put(Piece(index, text[sent:upto], entries, finish_reason, generated))
            sent, tokens = upto, tokens[going:]

        with contextlib.ExitStack() as scope:
            box = scope.enter_context(last_logits(self.model)) if k is not None else {}
            steps = generate_stream(
                self.model,
                ids,
                req.max_tokens,
                temperature=req.temperature,
                top_k=req.top_k,
                top_p=req.top_p,
                seed=seed,
                stop_tokens=[] if self.eot_id is None else [self.eot_id],
                steer=resolve_steer(self.saes, req.steer),
                weights=self.weights,
            )
            scope.callback(steps.close)
            for step in steps:
                token = int(step[0])
                if stop.is_set():
                    return
                if token < 0 or token == self.eot_id:
                    finish = "stop"
                    if token == self.eot_id:  # generated like any token: counted and scored
                        generated += 1
                        self.stats["tokens"] += 1
                        if k is not None:
                            end = self._entry(box["logits"], token, k, 0)
                    break
                generated += 1
                self.stats["tokens"] += 1
                start = len(text)
                text += decoder.decode(self.token_bytes(token))
                entry = (
                    self._entry(box["logits"], token, k, base + start) if k is not None else None
                )
                tokens.append((start, len(text), entry))
                cut = stop_position(text, req.stop, sent)
                if cut is not None:  # the tokens that begin before the stop sequence go
                    text, finish = text[:cut], "stop"
                    send(sum(1 for t in tokens if t[0] < cut), cut, finish)
                    return
                safe = len(text) - held_back(text, req.stop)
                going = [t for t in tokens if t[1] <= safe]
                send(len(going), going[-1][1] if going else sent)
        text += decoder.decode(b"", final=True)  # bytes of a character cut off at the end
        if end is not None:  # the end-of-text token: no text, its entry at the text's end
            end["offset"] = base + len(text)
            tokens.append((len(text), len(text), end))
        send(len(tokens), len(text), finish)

    # ---- the page's views ----------------------------------------------------------------
    def _view_ids(self, text: str, limit: int) -> tuple[list[int], bool]:
        ids = self.tok.encode_ordinary(text)
        if not ids:
            raise APIError(400, "the text is empty: type or generate some first.", param="text")
        return ids[:limit], len(ids) > limit

    def labels(self, ids: list[int], running: bool = True) -> list[dict[str, Any]]:
        """Each token's id and text. `running`: the text as read in sequence (a character split
        over tokens belongs to the token that completes it, so the texts join to the text);
        otherwise each token alone. `bytes` is set for a token that is not whole UTF-8."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        out = []
        for i in ids:
            raw, shown = self.token_bytes(i), self.token_str(i)
            text = decoder.decode(raw) if running else raw.decode("utf-8", errors="replace")
            label = {"id": i, "text": text}
            if shown.startswith("bytes:"):
                label["bytes"] = shown[6:]
            out.append(label)
        return out

    @torch.inference_mode()
    def tokens_view(self, text: str) -> dict[str, Any]:
        """Each token of `text` (at most T) with its loss given the tokens before it, its
        probability, and the five tokens the model found most likely there."""
        ids, cropped = self._view_ids(text, self.T)
        logits, _ = self.model(torch.tensor([ids], device=self.device))
        logp = logits[0].float().log_softmax(-1)
        out = self.labels(ids)
        for pos in range(1, len(ids)):
            out[pos]["loss"] = -float(logp[pos - 1, ids[pos]])
            top = logp[pos - 1].topk(min(5, logp.size(-1)))
            alternatives = self.labels(top.indices.tolist(), running=False)
            for alt, p in zip(alternatives, top.values.exp().tolist(), strict=True):
                alt["prob"] = p
            out[pos]["top"] = alternatives
        return {"tokens": out, "truncated": cropped}

    @torch.inference_mode()
    def attention_view(self, text: str) -> dict[str, Any]:
        """Every head's attention pattern over the first `max_view_tokens` tokens, as bytes
        (weight x 255, layer, head, query, key order) in base64: a 12 x 12 x 128 x 128 grid
        is 2.4 MB that way, several times that as JSON numbers."""
        ids, cropped = self._view_ids(text, min(self.T, self.limits.max_view_tokens))
        patterns = attention(self.model, ids)[:, 0].float()  # (L, H, T, T)
        raw = (patterns * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy().tobytes()
        L, H = patterns.shape[:2]
        return {
            "tokens": self.labels(ids),
            "layers": L,
            "heads": H,
            "patterns": base64.b64encode(raw).decode("ascii"),
            "truncated": cropped,
        }

    @torch.inference_mode()
    def lens_view(self, text: str) -> dict[str, Any]:
        """The logit lens: each layer's most likely next token and its probability at each of
        the first `max_view_tokens` positions."""
        ids, cropped = self._view_ids(text, min(self.T, self.limits.max_view_tokens))
        probs = logit_lens(self.model, ids)[:, 0].float().softmax(-1)  # (L, T, V)
        best = probs.max(dim=-1)
        top = best.indices.tolist()
        return {
            "tokens": self.labels(ids),
            "top": [self.labels(row, running=False) for row in top],
            "probs": [[round(p, 4) for p in row] for row in best.values.tolist()],
            "truncated": cropped,
        }
