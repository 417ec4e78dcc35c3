"""`mygpt2 sample` / `run_pretrained.py`: continue a start text, or an interactive prompt.

With `--prompt`: type a prompt, watch the continuation stream, change settings with
`/temp 0.7`, `/topk 40`, `/topp 0.9`, `/len 200`, `/seed 1`; Ctrl-C stops a generation,
Ctrl-D or `/quit` leaves.

`--steer DIR:FEATURE:ALPHA` (repeatable) steers every generation with SAE features
(`steer=` of `mygpt2.generate`); it is the one flag given more than once, so it is taken out
of the command line before the usual parsing.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from mygpt2.commands.args import ALL, Command, read_args
from mygpt2.errors import MyGPT2Error, UsageError
from mygpt2.sampling_settings import check_sampling

if TYPE_CHECKING:
    from mygpt2.config import Config

COMMAND = Command(
    name="sample",
    usage="""usage: mygpt2 sample [--start TEXT | --start FILE:path] [--prompt] [--FLAG VALUE ...]

Continue a start text with a trained model (--out_dir or --checkpoint) or GPT-2 weights
(--init_from gpt2|DIR), streaming to the terminal and writing out_dir/generated.txt.
--prompt opens an interactive prompt instead.""",
    sections={
        "run": ("out_dir", "checkpoint", "init_from", "device", "dtype", "seed"),
        "tokenizer": ("use_tiktoken", "tokenizer_path", "tiktoken_file"),
        "sample": ALL,
    },
    extra={
        "steer": "DIR:FEATURE:ALPHA: add ALPHA times feature FEATURE's decoder direction of the "
        "SAE in DIR at its hook point while sampling (repeatable; see docs/SAE.md)",
    },
)


def take_steer(argv: list[str]) -> tuple[list[str], list[str]]:
    """The values of every `--steer` flag (it repeats; other flags do not), and the rest."""
    specs, rest, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest += argv[i:]
            break
        if arg.startswith("--steer="):
            specs.append(arg.split("=", 1)[1])
        elif arg == "--steer":
            if i + 1 >= len(argv):
                raise UsageError("flag '--steer' needs a value: DIR:FEATURE:ALPHA.")
            specs.append(argv[i + 1])
            i += 1
        else:
            rest.append(arg)
        i += 1
    return specs, rest


def read_steer(specs: list[str]) -> list[tuple[Any, int, float]]:
    """(sae, feature, alpha) for each `DIR:FEATURE:ALPHA`, the SAE loaded and the feature id
    checked against its size (the hook is checked against the model when sampling starts)."""
    import math

    from mygpt2.sae import check_feature, load

    steer = []
    for spec in specs:
        parts = spec.rsplit(":", 2)
        try:
            if len(parts) != 3 or not parts[0]:
                raise ValueError
            feature, alpha = int(parts[1]), float(parts[2])
            if not math.isfinite(alpha):
                raise ValueError
        except ValueError:
            raise UsageError(
                f"--steer takes DIR:FEATURE:ALPHA (an SAE directory, a feature id, a finite "
                f"number; e.g. sae-out:12:4.0), got {spec!r}."
            ) from None
        sae = load(parts[0])
        try:
            check_feature(feature, sae.cfg.d_sae)
        except MyGPT2Error as e:
            raise UsageError(f"--steer {spec} ('{parts[0]}'): {e}") from None
        steer.append((sae, feature, alpha))
    return steer


def cli(argv: list[str]) -> None:
    specs, argv = take_steer(argv)
    args = read_args(argv, COMMAND)
    if args is None:
        return
    # torch is imported only now: --help and usage errors (sampling settings included, checked
    # by config.validate) answer at once
    from mygpt2.sample import sample, weights_dtype

    s = args.config.sample
    steer = read_steer(specs)  # before the model: a bad directory or feature answers at once
    print(f"mygpt2 sample: weights in {weights_dtype(args.config)}", file=sys.stderr)
    for sae, feature, alpha in steer:
        print(
            f"mygpt2 sample: steering with feature {feature} x {alpha:g} at {sae.cfg.hook_name}",
            file=sys.stderr,
        )
    if s.prompt:
        interactive(args.config, steer=steer)
        return
    done = sample(args.config, write_stdout, steer=steer)
    rate = done.tokens / done.seconds if done.seconds > 0 else float("nan")
    print(
        f"\n{done.tokens} tokens in {done.seconds:.2f}s ({rate:,.1f} tokens/s); "
        f"written to '{done.path}'.",
        file=sys.stderr,
    )


def write_stdout(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


HELP = """commands:
  /temp X    temperature (0 = greedy)      /topk N   top-k (0 = off)
  /topp X    nucleus, (0, 1]; 1 = off      /len N    tokens to generate
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


def interactive(
    cfg: Config, input_fn: Callable[[str], str] = input, steer: Sequence[Any] = ()
) -> None:
    """Read a prompt, stream the continuation, repeat; settings change with /commands."""
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  (line editing and history for input())
    from mygpt2.generate import generation_weights
    from mygpt2.sample import encode_start, load_model, stream_text

    model, tok = load_model(cfg)
    weights = generation_weights(model)  # laid out once for every prompt
    if steer:
        from mygpt2.generate import steering_hooks

        steering_hooks(model, steer)  # the hooks checked against the model before the prompt
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
                    target = cfg.run if name == "seed" else s
                    old = getattr(target, name)
                    setattr(target, name, value)
                    try:
                        check_sampling(s.temperature, s.top_k, s.top_p)
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
            write_stdout(line)
            _, n, dt = stream_text(
                model,
                tok,
                prompt_ids,
                cfg,
                cfg.run.seed,
                write_stdout,
                steer=steer,
                weights=weights,
            )
            print(f"\n[{n} tokens, {n / dt if dt > 0 else 0:,.1f} tokens/s]", flush=True)
        except KeyboardInterrupt:
            print("\n[stopped]", flush=True)
