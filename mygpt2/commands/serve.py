"""`mygpt2 serve`: the playground page and an OpenAI-compatible completions API for one model.

Loads the model as `mygpt2 sample` does, binds the address before loading (a taken port fails
at once), prints the URLs, and serves until Ctrl-C. The web packages come from the `serve`
extra and are imported only here and in `mygpt2.serve.app`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from mygpt2.commands.args import Command, read_args
from mygpt2.errors import MyGPT2Error, UsageError

COMMAND = Command(
    name="serve",
    usage="""usage: mygpt2 serve [--out_dir DIR | --checkpoint FILE | --init_from gpt2|DIR] [--port N] [--FLAG VALUE ...]

Serve one model on http://127.0.0.1:8000: a playground page (generate, tokens, attention, logit
lens, live training curves, SAE features with --features) and an OpenAI-compatible API (GET
/v1/models, POST /v1/completions, streaming included; SAE steering with --sae_dir). Requests
are answered one at a time, in the order they come.""",
    sections={
        "run": ("out_dir", "checkpoint", "init_from", "device", "dtype"),
        "tokenizer": ("use_tiktoken", "tokenizer_path", "tiktoken_file"),
    },
    extra={
        "host": "address to listen on (default 127.0.0.1; 0.0.0.0 opens it to the network)",
        "port": "port to listen on (default 8000; 0 picks a free one)",
        "api_key": "require 'Authorization: Bearer KEY' on the API (default: $MYGPT2_API_KEY)",
        "name": "the model's name in the API (default: the out_dir's or init_from's name)",
        "max_tokens": "the most tokens one completion may ask for (default 1024)",
        "max_choices": "the most completions (prompts x n) one request may ask for (default 8)",
        "threads": "PyTorch threads for the model (default: all cores but one, left to the server)",
        "log": "server log level: warning (default), info (a line per request) or debug",
        "sae_dir": "SAE directories (comma-separated) that completions may steer with "
        "(the 'steer' field; see docs/SERVE.md)",
        "features": "directories written by mygpt2 inspect features (comma-separated): the "
        "Features tab; their SAEs can steer too",
    },
)


def _int(extras: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = extras.get(name, str(default))
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise UsageError(f"--{name} takes a whole number from {low} to {high}, got {raw!r}.")
    return int(raw)


def register_saes(model, extras: dict[str, str]):
    """The SAEs of --sae_dir and --features, each checked against the model; None without."""
    if "sae_dir" not in extras and "features" not in extras:
        return None
    from mygpt2.serve.features import SAEs

    saes = SAEs()
    for flag, add in (("sae_dir", saes.add_sae), ("features", saes.add_report)):
        for directory in filter(None, (d.strip() for d in extras.get(flag, "").split(","))):
            add(directory, model)
    return saes


def cli(argv: list[str]) -> None:
    args = read_args(argv, COMMAND)
    if args is None:
        return
    cfg, extras = args.config, args.extras
    host = extras.get("host", "127.0.0.1")
    port = _int(extras, "port", 8000, 0, 65535)
    level = extras.get("log", "warning")
    if level not in ("warning", "info", "debug"):
        raise UsageError(f"--log takes warning, info or debug, got {level!r}.")
    api_key = extras.get("api_key", os.environ.get("MYGPT2_API_KEY", "")) or None
    try:  # the web stack is an optional extra
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise MyGPT2Error(
            "mygpt2 serve needs the web server packages: pip install 'mygpt2[serve]' "
            "(starlette and uvicorn)."
        ) from None
    from mygpt2.checkpoint import checkpoint_path
    from mygpt2.sample import load_model, weights_dtype
    from mygpt2.serve.app import bind, create_app, is_loopback, make_server
    from mygpt2.serve.completions import Limits
    from mygpt2.serve.engine import Engine

    limits = Limits(
        max_tokens=_int(extras, "max_tokens", 1024, 1, 1_000_000),
        max_choices=_int(extras, "max_choices", 8, 1, 1024),
    )
    local = is_loopback(host)
    if not local:
        print(
            f"mygpt2 serve: warning: --host {host} lets other machines reach this server"
            + (
                "." if api_key else ", and no --api_key is set: anyone who can reach it can use it."
            ),
            file=sys.stderr,
        )
    sock = bind(host, port)
    scratch = cfg.run.init_from == "scratch"
    name = extras.get("name") or (
        Path(cfg.run.init_from).name if not scratch else checkpoint_path(cfg).resolve().parent.name
    )
    model, tok = load_model(cfg)
    threads = _int(extras, "threads", 0, 0, 1024) or None
    saes = register_saes(model, extras)
    engine = Engine(model, tok, name, limits, threads, saes=saes)
    app = create_app(
        engine, api_key, out_dir=cfg.run.out_dir if scratch else "", loopback_only=local
    )
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{sock.getsockname()[1]}"
    params = model.num_params() / 1e6
    print(
        f"mygpt2 serve: {name}, {params:.1f}M parameters, T={model.config.T}, tokenizer {tok.name}"
        f", weights in {weights_dtype(cfg)}"
    )
    print(f"  playground  {url}/")
    print(
        f"  API         {url}/v1  (OpenAI completions{'; Bearer key required' if api_key else ''})"
    )
    for entry in saes.listing() if saes else []:
        shown_tab = ", Features tab" if entry["report"] else ""
        print(
            f"  SAE         {entry['sae']} ({entry['hook']}, {entry['d_sae']} features{shown_tab})"
        )
    print("Ctrl-C stops.", flush=True)
    try:
        make_server(app, level).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn stops cleanly, then raises Ctrl-C again: the usual end
        pass
    finally:
        engine.close()
        sock.close()
    print("mygpt2 serve: stopped.")
