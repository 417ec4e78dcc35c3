"""The `mygpt2` command: one entry, a subcommand per job.

Each subcommand is a module in `mygpt2/commands/` with a `cli(argv)` function; this file only
dispatches and turns a `MyGPT2Error` into a one-line message and its exit status (2 for usage
and input, 1 for a fault while working), so users never see a traceback. A command may return
its own status (`train`: 130/143 when a signal stopped it after saving); an interrupt that
escapes is 130, or the status it carries (143 for SIGTERM).

When the reader of the output goes away (`mygpt2 train --help | head`), the command stops
quietly with 141 (128 + SIGPIPE, what the shell reports for `yes | head`): Python ignores
SIGPIPE, so the write raises `BrokenPipeError`, and that becomes the status. Only a closed
stdout or stderr counts; a broken pipe anywhere else is still a bug to see.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import os
import select
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
    "sae": (
        "mygpt2.commands.sae",
        "sparse autoencoders on a hook point: train, eval (SAELens's format)",
    ),
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


CLOSED_PIPE = 141  # 128 + SIGPIPE


def _output_closed() -> bool:
    """Whether the reader of stdout or stderr has gone (a pipe's write end then polls POLLERR)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            poll = select.poll()
            poll.register(stream.fileno(), select.POLLOUT)
            if any(events & select.POLLERR for _, events in poll.poll(0)):
                return True
        except (AttributeError, OSError, ValueError):  # no real file (captured), or no poll
            continue
    return False


def _stop_writing() -> int:
    """Point stdout at /dev/null, so the flush at exit cannot raise again; the status."""
    with contextlib.suppress(AttributeError, OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return CLOSED_PIPE


def run(command: str, argv: list[str], *, whole_process: bool = False) -> int:
    """Run one subcommand, printing user errors without a traceback. Returns the exit code.

    `whole_process`: the caller is a process's entry point (the console script, `python -m
    mygpt2.cli`, the root scripts), which exits when this returns; callers within a longer
    life (tests, notebooks) leave it off. Then, once the command is done, every object is
    frozen out of the cyclic garbage collector's scans: the interpreter's last collection
    would otherwise walk them all (torch's alone are some 10^5) to free memory the process
    gives back anyway, 0.3 s of the speedrun's exit. Only objects still alive in reference
    cycles at exit lose their finalisers by it; mygpt2 closes its files, logs and progress
    bars explicitly and writes files by renaming complete ones."""
    module_name, _ = COMMANDS[command]
    warnings.showwarning = _show_warning  # library warnings read as one line, no source path
    try:
        status = importlib.import_module(module_name).cli(argv)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's flush at exit
    except BrokenPipeError:
        if not _output_closed():
            raise
        return _stop_writing()
    except MyGPT2Error as e:
        print(f"mygpt2 {command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        print(f"mygpt2 {command}: interrupted", file=sys.stderr)
        return getattr(e, "exit_code", 130)
    finally:
        if whole_process:
            gc.freeze()
    return status or 0


def entry() -> int:
    """The `mygpt2` console script and `python -m mygpt2.cli`: `main` as a whole process."""
    return main(whole_process=True)


def main(argv: list[str] | None = None, *, whole_process: bool = False) -> int:
    """The `mygpt2` command on `argv` (default: this process's arguments); see `run`."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        try:
            print(usage(), flush=True)
        except BrokenPipeError:
            return _stop_writing()
        return 0
    if argv[0] not in COMMANDS:
        print(f"mygpt2: unknown command '{argv[0]}'.\n\n{usage()}", file=sys.stderr)
        return 2
    return run(argv[0], argv[1:], whole_process=whole_process)


if __name__ == "__main__":
    sys.exit(entry())
