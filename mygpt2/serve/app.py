"""The web application: the playground page, OpenAI's completions API, the page's views.

Routes:
    GET  /                    the playground (static HTML, JS and CSS from `static/`)
    GET  /v1/models           the one model, OpenAI's list shape
    GET  /v1/models/{id}      that model, OpenAI's model object (404 for any other id)
    POST /v1/completions      OpenAI's completions, `stream: true` as server-sent events
    GET  /api/info            the model's shape and the server's limits (for the page)
    POST /api/tokens          {"text"}: tokens, per-token loss, top-5 alternatives
    POST /api/attention       {"text"}: every head's attention pattern
    POST /api/lens            {"text"}: the logit lens
    GET  /api/metrics         ?out_dir=&offset=&file=: new rows of a run's metrics.jsonl
    GET  /api/compare         ?dirs=a,b&target=: `mygpt2 compare`'s table of those runs
    GET  /api/saes, /api/features, /api/features/{id}: the Features tab (`serve/features.py`)

Every error, from a bad field to an unknown route or a fault, answers in OpenAI's error shape.
With an API key, /v1 and /api need `Authorization: Bearer KEY`. POST bodies must be JSON sent
as `application/json` (a form post from another web site cannot reach the model), and a
server on a loopback address answers only requests addressed to a loopback name.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator
from importlib.resources import files
from ipaddress import ip_address
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from mygpt2.errors import MyGPT2Error
from mygpt2.serve.completions import (
    APIError,
    check_text,
    choice_body,
    completion_body,
    model_body,
    models_body,
    no_model,
    parse_completion,
    usage_body,
)
from mygpt2.serve.engine import Engine
from mygpt2.serve.features import check_steer, feature_routes
from mygpt2.serve.runs import compare, read_metrics

log = logging.getLogger("mygpt2.serve")
STATIC = files("mygpt2.serve") / "static"
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address) only reaches this machine."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_name(header: str) -> str:
    """The name in a Host header, without the port ([::1]:8000 -> ::1)."""
    if header.startswith("["):
        return header[1 : header.find("]")]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


async def read_json(request: Request, limit: int) -> Any:
    """The request's JSON body, refused when it is not JSON, not sent as JSON, or too big."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise APIError(
            415,
            f"send the body as JSON with 'Content-Type: application/json' (got {kind or 'none'!r}).",
            code="unsupported_media_type",
        )
    size = request.headers.get("content-length", "")
    if size.isdigit() and int(size) > limit:
        raise APIError(413, f"the body is {size} bytes; at most {limit}.", code="too_large")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise APIError(413, f"the body is over {limit} bytes.", code="too_large")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:
        raise APIError(400, f"the body is not valid JSON: {e}.", code="invalid_json") from None


async def until_disconnected(request: Request) -> None:
    """Returns when the client has gone (after its body was read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def sse(payload: Any) -> str:
    """One server-sent event."""
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


def create_app(
    engine: Engine, api_key: str | None = None, out_dir: str = "", loopback_only: bool = True
) -> Starlette:
    """The application around `engine`. `out_dir`: the training view's first run directory;
    `loopback_only`: answer only requests addressed to localhost (the server is bound there)."""
    limits = engine.limits
    created = int(time.time())

    def guard(request: Request) -> None:
        if loopback_only and not is_loopback(_host_name(request.headers.get("host", ""))):
            raise APIError(
                421, "this server answers requests to localhost only.", code="wrong_host"
            )
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip(), api_key):
            raise APIError(
                401,
                "missing or wrong API key: send 'Authorization: Bearer KEY' with the key the "
                "server was started with (--api_key).",
                code="invalid_api_key",
            )

    async def index(request: Request) -> Response:
        return FileResponse(str(STATIC / "index.html"))

    async def models(request: Request) -> Response:
        guard(request)
        return JSONResponse(models_body(engine.name, created))

    async def one_model(request: Request) -> Response:
        guard(request)
        wanted = request.path_params["model"]
        if wanted != engine.name:
            raise no_model(wanted)
        return JSONResponse(model_body(engine.name, created))

    async def completions(request: Request) -> Response:
        guard(request)
        body = await read_json(request, limits.max_body_bytes)
        req = parse_completion(body, limits, engine.vocab_size, engine.eot_id)
        if req.steer:  # a 400 before any generation, also for a streamed request
            await engine.call(check_steer, engine.model, engine.saes, req.steer)
        prompt_ids = await asyncio.to_thread(engine.encode, req.prompts)
        ident, now = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        prompt_tokens = sum(len(ids) for ids in prompt_ids)

        if req.stream:

            async def events() -> AsyncIterator[str]:
                generated = 0
                try:
                    async with contextlib.aclosing(engine.complete(req, prompt_ids)) as pieces:
                        async for p in pieces:
                            generated += p.generated if p.finish_reason else 0
                            choice = choice_body(p.index, p.text, p.entries, p.finish_reason)
                            yield sse(completion_body(ident, now, engine.name, [choice], None))
                except Exception as e:  # headers are gone: the error travels as an event
                    yield sse(error_of(e).body())
                    return
                if req.include_usage:
                    usage = usage_body(prompt_tokens, generated)
                    yield sse(completion_body(ident, now, engine.name, [], usage))
                yield sse("[DONE]")

            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

        async def collect() -> dict[str, Any]:
            total = len(prompt_ids) * req.n
            texts: list[list[str]] = [[] for _ in range(total)]
            entries: list[list[dict]] = [[] for _ in range(total)]
            finish: list[str | None] = [None] * total
            generated = 0
            async with contextlib.aclosing(engine.complete(req, prompt_ids)) as pieces:
                async for p in pieces:
                    texts[p.index].append(p.text)
                    entries[p.index] += p.entries or []
                    if p.finish_reason:
                        finish[p.index], generated = p.finish_reason, generated + p.generated
            choices = [
                choice_body(
                    i,
                    "".join(texts[i]),
                    entries[i] if req.logprobs is not None else None,
                    finish[i],
                )
                for i in range(total)
            ]
            usage = usage_body(prompt_tokens, generated)
            return completion_body(ident, now, engine.name, choices, usage)

        # a client that leaves while waiting cancels its generation, as a streaming one does
        work = asyncio.ensure_future(collect())
        gone = asyncio.ensure_future(until_disconnected(request))
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        gone.cancel()
        if not work.done():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
            return Response(status_code=499)
        return JSONResponse(work.result())

    async def info(request: Request) -> Response:
        guard(request)
        cfg = engine.model.config
        return JSONResponse(
            {
                "model": engine.name,
                "parameters": engine.model.num_params(),
                "n_layers": cfg.n_layers,
                "n_heads": cfg.n_heads,
                "T": cfg.T,
                "vocab_size": cfg.vocab_size,
                "tokenizer": engine.tok.name,
                "eot_id": engine.eot_id,
                "out_dir": out_dir,
                "limits": dataclasses.asdict(limits),
            }
        )

    def view(method: Any) -> Any:
        async def handler(request: Request) -> Response:
            guard(request)
            body = await read_json(request, limits.max_body_bytes)
            text = body.get("text") if isinstance(body, dict) else None
            if not isinstance(text, str):
                raise APIError(400, 'expected {"text": "..."}.', param="text", code="invalid_type")
            check_text(text, "text")
            return JSONResponse(await engine.call(method, text))

        return handler

    async def metrics(request: Request) -> Response:
        guard(request)
        q = request.query_params
        offset = q.get("offset", "0")
        if not offset.isdigit():
            raise APIError(400, f"offset must be a whole number, got {offset!r}.", param="offset")
        rows = await asyncio.to_thread(
            read_metrics, q.get("out_dir", out_dir), int(offset), q.get("file") or None
        )
        return JSONResponse(rows)

    async def comparison(request: Request) -> Response:
        guard(request)
        q = request.query_params
        return JSONResponse(
            await asyncio.to_thread(compare, q.get("dirs", ""), q.get("target", ""))
        )

    async def on_api_error(request: Request, exc: Exception) -> Response:
        err = error_of(exc)
        where = f"{request.method} {request.url.path}"
        if err.code == "not_found" and isinstance(exc, HTTPException):
            err.message = (
                f"no such route: {where}. The API is GET /v1/models and POST /v1/completions."
            )
        elif err.code == "method_not_allowed":
            err.message = f"{where} is not allowed here; see the routes in docs/SERVE.md."
        return JSONResponse(err.body(), status_code=err.status)

    routes = [
        Route("/", index),
        Route("/v1/models", models),
        Route("/v1/models/{model:path}", one_model),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/api/info", info),
        Route("/api/tokens", view(engine.tokens_view), methods=["POST"]),
        Route("/api/attention", view(engine.attention_view), methods=["POST"]),
        Route("/api/lens", view(engine.lens_view), methods=["POST"]),
        Route("/api/metrics", metrics),
        Route("/api/compare", comparison),
        *feature_routes(engine.saes, guard),
        Mount("/static", StaticFiles(directory=str(STATIC)), name="static"),
    ]
    handlers = {APIError: on_api_error, HTTPException: on_api_error, Exception: on_api_error}
    return Starlette(routes=routes, exception_handlers=handlers)


def error_of(exc: Exception) -> APIError:
    """Any exception as the API error the client sees; faults are logged with their traceback."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return APIError(exc.status_code, str(exc.detail), code=code)
    if isinstance(exc, MyGPT2Error):
        return APIError(400, str(exc))
    log.error("fault while answering a request", exc_info=exc)
    return APIError(
        500,
        f"the server failed: {type(exc).__name__}: {exc}",
        code="server_error",
        kind="server_error",
    )


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready socket on host:port (port 0: any free port); a clear error when the
    address is taken or wrong."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise MyGPT2Error(f"cannot use --host {host}: {e.strerror}.") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        hint = " Pick another with --port (0: any free port)." if e.errno == 98 else ""
        raise MyGPT2Error(f"cannot listen on {host}:{port}: {e.strerror}.{hint}") from None
    return sock


def make_server(app: Starlette, log_level: str = "warning") -> Any:
    """A uvicorn server for `app` (run it with `.run(sockets=[bind(host, port)])`)."""
    import uvicorn

    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=log_level in ("info", "debug"),
        lifespan="off",
        http="h11",
        loop="asyncio",
        timeout_graceful_shutdown=3,
    )
    return uvicorn.Server(config)


class Background:
    """A server running on a thread of this process (tests, benchmarks, notebooks):
    `with Background(app) as server: ... server.url ...`."""

    def __init__(self, app: Starlette, host: str = "127.0.0.1", port: int = 0):
        self.sock = bind(host, port)
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.sock.getsockname()[1]}"
        self.server = make_server(app)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> Background:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
