"""Run safety: what keeps `mygpt2 train` from destroying work, and how a run ends.

- One writer per `out_dir`: `guarded` takes `out_dir/.lock` (`mygpt2.lock`, rank 0 only under
  DDP) before anything is written there and releases it however the run ends. It also
  removes the temporary files a killed run's atomic writes left behind (safe: we hold the lock).
- Never overwrite silently: a new run into an `out_dir` holding `checkpoint.pt` stops before
  any work, saying what is there and the three ways on (`--resume`, another `--out_dir`,
  `--overwrite`). `--overwrite` deletes nothing up front: the old checkpoint is replaced by
  the new run's first (atomic) save.
- Signals: until the loop starts, SIGINT/SIGTERM raise `Interrupted` (exit 130/143), so the
  lock is released; in the loop they become a flag, and the loop saves before it stops.
- Bounded loss on a hard kill: `CheckpointClock` makes the loop save at least every
  `checkpoint_minutes` of wall time (it also saves at every evaluation).
- Honest endings: `resume_command` is the command line that continues a stopped run (the
  same flags with `--resume`, without `--overwrite`, `--stop_at` and `--break_lock`). It is
  built from the flags and program the command layer passes down (`train(cfg, argv,
  program)`); nothing here reads `sys.argv`, so a run started from Python, a test or another
  command says what was really asked of it.
- No work lost to our own tools: an exception in evaluation, reporting, plotting, health or
  snapshots after a completed optimizer step is a `ToolFailure`; the loop saves the step's
  checkpoint and stops with one line (`tool_failure`: what failed, where in mygpt2, the step
  saved, the resume line), exit 1. Under DDP the failure travels in the loop's per-step
  agreement, so every process saves and stops together instead of hanging in a collective.
- Resume knows its inputs: `resolve_input_paths` makes the input paths absolute, and a
  checkpoint records its data (`data_record`), so `--resume` works from any working
  directory and `check_data` refuses a changed corpus unless `--allow_data_change`.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mygpt2.config import FALSE_WORDS, TRUE_WORDS, Config, field_type, wants_gpt2_tokenizer
from mygpt2.errors import MyGPT2Error, UsageError
from mygpt2.lock import DirectoryLock
from mygpt2.runtime import StopRequest

# what a training run writes with atomic_write (their temporary files are `.NAME.*.tmp`)
RUN_FILES = ("checkpoint.pt", "metrics.jsonl", "loss_plot.png")

# ----------------------------------------------------------------------------- the request


def check_request(cfg: Config) -> None:
    """Refuse contradictory per-invocation flags before anything else."""
    if cfg.train.resume and cfg.run.overwrite:
        raise UsageError(
            "--overwrite and --resume contradict each other: --resume continues the run in "
            "out_dir, --overwrite replaces it. Give one of them."
        )


def describe_checkpoint(path: Path) -> str:
    """'step 400 of 1000, best val loss 2.1234, saved 2025-01-02 10:11' (cheap: memory-mapped)."""
    saved = time.strftime("%Y-%m-%d %H:%M", time.localtime(path.stat().st_mtime))
    try:
        import torch

        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        step, best = state["step"], state.get("best_val_loss", float("inf"))
        max_steps = state["config"]["train"]["max_steps"]
    except Exception:  # damaged or foreign: say so, but it is still in the way
        return f"a file that is not a readable checkpoint, saved {saved}"
    val = f"best val loss {best:.4f}" if best != float("inf") else "no evaluation yet"
    return f"step {step} of {max_steps}, {val}, saved {saved}"


def refuse_overwrite(cfg: Config) -> None:
    """Stop a new run (no --resume, no --overwrite) whose out_dir holds a checkpoint."""
    out = Path(cfg.run.out_dir)
    path = out / "checkpoint.pt"
    if cfg.train.resume or cfg.run.overwrite or not path.is_file():
        return
    raise MyGPT2Error(
        f"'{out}' already holds a run ({path.name}: {describe_checkpoint(path)}), and a new "
        "run would replace it. Continue it with --resume, start the new run in another "
        "--out_dir, or replace it with --overwrite."
    )


# ----------------------------------------------------------------------------- signals and the lock


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM outside the loop's safe points: stop now (exit 128 + signal)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum


class StopSignals(StopRequest):
    """SIGINT/SIGTERM raise `Interrupted` until `deferred` is set; then the first one is only
    remembered (`signum`), for the loop to save and stop; a second one still stops at once."""

    def __init__(self) -> None:
        super().__init__()
        self.deferred = False
        self.signum = 0

    def _handle(self, signum, frame):
        if not self.deferred or self.signum:
            raise Interrupted(signum)
        self.signum = signum
        self.requested = True


def remove_leftovers(out_dir: Path) -> list[str]:
    """Delete temporary files that a killed run's atomic writes left in `out_dir`."""
    removed = []
    for name in RUN_FILES:
        for tmp in out_dir.glob(f".{name}.*.tmp"):
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp.name)
    return removed


@contextlib.contextmanager
def guarded(cfg: Config, is_main: bool, say: Any, command: str) -> Iterator[StopSignals]:
    """The safe frame of a training run: checks the request, takes out_dir's lock (rank 0),
    refuses to overwrite a run, and turns signals into `StopSignals`; all undone on exit.
    `say` prints a note (the Reporter's); `command` is what the lock file says the run is."""
    check_request(cfg)
    with StopSignals() as signals:
        lock = None
        if is_main:
            lock = DirectoryLock(cfg.run.out_dir, command, break_lock=cfg.run.break_lock)
        try:
            if lock is not None:
                lock.acquire()
                for note in lock.notes:
                    say(f"note: {note}.")
                removed = remove_leftovers(Path(cfg.run.out_dir))
                if removed:
                    say(f"note: removed {len(removed)} unfinished file(s) of a killed run.")
                refuse_overwrite(cfg)
            yield signals
        finally:
            if lock is not None:
                lock.release()


class CheckpointClock:
    """Whether `minutes` of wall time have passed since the last checkpoint (0: never)."""

    def __init__(self, minutes: float) -> None:
        self.seconds = minutes * 60.0
        self.last = time.monotonic()

    def due(self) -> bool:
        return self.seconds > 0 and time.monotonic() - self.last >= self.seconds

    def reset(self) -> None:
        self.last = time.monotonic()


# ----------------------------------------------------------------------------- how a run ends


# flags of one invocation that a resume line must not repeat (`--resume` is added once)
NOT_REPEATED = ("resume", "overwrite", "stop_at", "break_lock")


def without_flags(argv: list[str], names: tuple[str, ...]) -> list[str]:
    """`argv` less the flags `names` and their values (`--k v`, `--k=v`, a bare boolean)."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            out.extend(argv[i:])
            break
        key, eq, _ = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        key = key.replace("-", "_")
        if key not in names:
            out.append(arg)
        elif not eq and i + 1 < len(argv):
            # `--resume` may stand alone; `--resume false` and `--stop_at 5` take their value
            is_bool = field_type(key) is bool
            if not is_bool or argv[i + 1].lower() in TRUE_WORDS + FALSE_WORDS:
                i += 1
        i += 1
    return out


def run_command(argv: list[str] | None, program: str) -> str:
    """The run's command line as the lock file records it (the Python API has none)."""
    if argv is None:
        return "mygpt2.train() called from Python"
    return f"{program} {shlex.join(argv)}".strip()


def resume_command(cfg: Config, argv: list[str] | None, program: str, **replace: Any) -> str:
    """The command line that continues this run: the same flags with `--resume`, without
    --overwrite/--stop_at/--break_lock (`replace` sets others, say max_steps=2000). Without
    `argv` (the Python API), the checkpoint alone: `mygpt2 train --out_dir D --resume`."""
    if argv is None:
        program, argv = "mygpt2 train", [f"--out_dir={cfg.run.out_dir}"]
    words = without_flags(list(argv), NOT_REPEATED + tuple(replace))
    # a config file may set them too: flags beat the file
    if cfg.given.get("stop_at", "").startswith("file"):
        words.append("--stop_at=0")
    if cfg.given.get("overwrite", "").startswith("file"):
        words.append("--overwrite=false")
    words += ["--resume", *(f"--{k}={v}" for k, v in replace.items())]
    return f"{program} {shlex.join(words)}"


@dataclass
class ToolFailure:
    """An exception in the run's own tools after optimizer step `step` was completed."""

    what: str  # "the evaluation", "reporting the step", "keeping a snapshot"
    step: int
    error: Exception


PACKAGE = Path(__file__).resolve().parent


def describe_error(error: BaseException, limit: int = 300) -> str:
    """One line: a MyGPT2Error's message; otherwise its type, message and the innermost line
    of mygpt2 it came through (`TypeError: ... at mygpt2/evaluation/text.py:120 in token_nll`)."""
    text = " ".join(str(error).split()).rstrip(".")
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    if isinstance(error, MyGPT2Error):
        return text
    ours = [
        frame
        for frame in traceback.extract_tb(error.__traceback__)
        if Path(frame.filename).resolve().is_relative_to(PACKAGE)
    ]
    where = ""
    if ours:
        frame = ours[-1]
        path = Path(frame.filename).resolve().relative_to(PACKAGE.parent).as_posix()
        where = f" at {path}:{frame.lineno} in {frame.name}"
    return f"{type(error).__name__}: {text}{where}" if text else f"{type(error).__name__}{where}"


def tool_failure(
    failure: ToolFailure | None,
    step: int,
    path: Path,
    resume: str,
    save_error: Exception | None = None,
) -> str:
    """The one line a run stopped by a `ToolFailure` ends with (`failure` None: on a process
    where nothing failed, another one's did; `save_error`: why step `step` could not be saved)."""
    if failure is None:
        cause = f"another process of this run failed after step {step}"
    else:
        cause = f"{failure.what} failed after step {failure.step} ({describe_error(failure.error)})"
    if save_error is not None:
        return (
            f"{cause}; saving step {step} failed too ({describe_error(save_error)}), so "
            f"'{path}' holds the last checkpoint saved before. Once the causes are fixed, "
            f"resume with: {resume}"
        )
    return (
        f"{cause}; saved the checkpoint at step {step} in '{path}', so no step is lost. Once "
        f"the cause is fixed, resume with: {resume}"
    )


def exit_code(summary: dict[str, Any]) -> int:
    """0 for a finished or `--stop_at` run; 128 + the signal for one stopped by SIGINT/SIGTERM."""
    return 128 + summary["signal"] if summary.get("signal") else 0


# ----------------------------------------------------------------------------- inputs


def data_identity(data: str) -> str:
    """A data source as a checkpoint keeps it: paths (files, directories, globs) absolute;
    `stdlib`, `shakespeare` and `hf:...` as they are."""
    if not data or data in ("stdlib", "shakespeare") or data.startswith("hf:"):
        return data
    return os.path.abspath(os.path.expanduser(data))


def resolve_input_paths(cfg: Config) -> None:
    """GPT-2's tokenizer when the config asks for it; the input paths (tokenizer files, data,
    token and cache directories) made absolute, so `--resume` works from any directory."""
    if wants_gpt2_tokenizer(cfg):
        cfg.tokenizer.use_tiktoken = True
    for name in ("tokenizer_path", "tiktoken_file"):
        value = getattr(cfg.tokenizer, name)
        if value and Path(value).exists():
            setattr(cfg.tokenizer, name, str(Path(value).resolve()))
    cfg.data.data = data_identity(cfg.data.data)
    for name in ("data_dir", "cache_dir", "shakespeare_path"):
        if value := getattr(cfg.data, name):
            setattr(cfg.data, name, os.path.abspath(os.path.expanduser(value)))


def data_record(cfg: Config, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a run trains on: the source, its fingerprint, and with `meta` (meta.json of the
    prepared files) the token counts. Without `meta` the source is only looked at (cheap)."""
    if meta is None:
        from mygpt2.corpus import open_corpus

        return {"data": cfg.data.data, "fingerprint": open_corpus(cfg.data).fingerprint}
    return {
        "data": cfg.data.data,
        "fingerprint": meta["source"]["fingerprint"],
        "train_tokens": int(meta["train_tokens"]),
        "val_tokens": int(meta["val_tokens"]),
    }


def check_data(
    saved: dict[str, Any] | None, now: dict[str, Any], cfg: Config, path: Path
) -> list[str]:
    """How the data differs from the checkpoint's record (the keys both have); refused unless
    --allow_data_change. Old checkpoints (no record) are not checked."""
    if not saved:
        return []
    changes = [
        f"{key}: checkpoint {saved[key]!r}, now {now[key]!r}"
        for key in now
        if key in saved and saved[key] != now[key]
    ]
    if changes and not cfg.train.allow_data_change:
        raise MyGPT2Error(
            f"cannot resume from '{path}': its data changed ({'; '.join(changes)}). Resume "
            f"with the data it was trained on (--data {shlex.quote(str(saved['data']))}, "
            "unchanged, at the same --split), or pass --allow_data_change to continue on this "
            "data (logged in metrics.jsonl)."
        )
    return changes
