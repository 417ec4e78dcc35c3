"""The `mygpt2` command: one entry, a subcommand per job.

Each subcommand is a module in `mygpt2/commands/` with a `cli(argv)` function; this file only
dispatches and turns a `MyGPT2Error` into a one-line message and its exit status (2 for usage
and input, 1 for a fault while working), so users never see a traceback. A command may return
its own status (`train`: 130/143 when a signal stopped it after saving); an interrupt that
escapes is 130, or the status it carries (143 for SIGTERM).
"""

from __future__ import annotations

import importlib
import sys
import warnings

from mygpt2.errors import MyGPT2Error

# subcommand -> (module with a `cli(argv)` function, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": (
        "mygpt2.commands.demo",
        "the whole pipeline on the built-in corpus, offline, on a CPU",
    ),
    "tokenizer": ("mygpt2.commands.tokenizer", "train, show or inspect a BPE tokenizer"),
    "prepare": ("mygpt2.commands.prepare", "tokenize a corpus into train.bin / val.bin"),
    "train": ("mygpt2.commands.train", "train a GPT (from scratch, GPT-2 weights, or --resume)"),
    "sample": (
        "mygpt2.commands.sample",
        "generate text from a checkpoint or GPT-2 weights (--prompt)",
    ),
    "export": (
        "mygpt2.commands.export",
        "a checkpoint's weights as safetensors or a Hugging Face directory",
    ),
    "eval": (
        "mygpt2.commands.eval",
        "loss, perplexity, bits per byte and multiple-choice accuracy, models side by side",
    ),
    "inspect": (
        "mygpt2.commands.inspect",
        "look inside a model: attention, logit lens, patching, per-token loss, logit attribution",
    ),
    "compare": (
        "mygpt2.commands.compare",
        "training runs side by side: curves, a table, config differences",
    ),
    "sweep": ("mygpt2.commands.sweep", "train a grid of settings one run after another, compared"),
    "serve": (
        "mygpt2.commands.serve",
        "a web playground and an OpenAI-compatible completions API for one model",
    ),
}


def usage() -> str:
    """The top-level help text."""
    lines = ["usage: mygpt2 <command> [--flag value ...]", "", "commands:"]
    lines += [f"  {name:<10} {desc}" for name, (_, desc) in COMMANDS.items()]
    lines += ["", "Run 'mygpt2 <command> --help' for the flags of one command."]
    return "\n".join(lines)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"mygpt2: warning: {message}", file=sys.stderr, flush=True)


def run(command: str, argv: list[str]) -> int:
    """Run one subcommand, printing user errors without a traceback. Returns the exit code."""
    module_name, _ = COMMANDS[command]
    warnings.showwarning = _show_warning  # library warnings read as one line, no source path
    try:
        status = importlib.import_module(module_name).cli(argv)
    except MyGPT2Error as e:
        print(f"mygpt2 {command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        print(f"mygpt2 {command}: interrupted", file=sys.stderr)
        return getattr(e, "exit_code", 130)
    return status or 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `mygpt2` console script."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] not in COMMANDS:
        print(f"mygpt2: unknown command '{argv[0]}'.\n\n{usage()}", file=sys.stderr)
        return 2
    return run(argv[0], argv[1:])


if __name__ == "__main__":
    sys.exit(main())
