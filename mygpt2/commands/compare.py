"""`mygpt2 compare DIR DIR ...`: training runs side by side (mygpt2.compare)."""

from __future__ import annotations

from mygpt2.commands.args import Command, read_args
from mygpt2.errors import UsageError

COMMAND = Command(
    name="compare",
    usage="""usage: mygpt2 compare DIR DIR ... [--out compare.png] [--target LOSS]

Compare training runs (each DIR is a run's out_dir, holding metrics.jsonl and checkpoint.pt):
one picture of validation and training loss against steps, tokens and training seconds
(--out, default compare.png), a table (final and best val loss, bits per byte, tokens/s,
training seconds, time to --target) and the config settings in which the runs differ.
Training seconds count training steps only (no data preparation, evaluation or saving).
Runs with different tokenizers are compared by bits per byte. Example:

  mygpt2 compare out-adamw out-muon --target 1.9""",
    sections={},
    extra={
        "out": "the picture to write [default: compare.png]",
        "target": "show the training time to this val loss [default: the loss all runs reached]",
    },
)


def cli(argv: list[str]) -> None:
    args = read_args(argv, COMMAND, positional=True)
    if args is None:
        return
    if not args.positional:
        raise UsageError("give the run directories to compare: mygpt2 compare DIR DIR ...")
    target = None
    if "target" in args.extras:
        try:
            target = float(args.extras["target"])
        except ValueError:
            raise UsageError(f"--target must be a number, got {args.extras['target']!r}.") from None
    from mygpt2.compare import compare_runs, plot, report

    comparison = compare_runs(args.positional, target)
    print(report(comparison))
    out = args.extras.get("out", "compare.png")
    plot(comparison, out)
    print(f"\nwrote {out}")
    hint = live_hint(args.positional, [r.config is not None for r in comparison.runs])
    if hint:
        print(hint)


def live_hint(dirs: list[str], has_checkpoint: list[bool]) -> str | None:
    """How to watch these runs in the playground's Training view, when that can work: the web
    extra is installed, a run has a checkpoint for `mygpt2 serve` to load, and no directory
    has a comma (the view splits its list there)."""
    import importlib.util
    import shlex
    from urllib.parse import quote

    if not all(importlib.util.find_spec(m) for m in ("starlette", "uvicorn")):
        return None
    if not any(has_checkpoint) or any("," in d for d in dirs):
        return None
    model = dirs[has_checkpoint.index(True)]
    runs = quote(",".join(dirs), safe="/,~.-_")
    return (
        f"live in the playground: mygpt2 serve --out_dir {shlex.quote(model)} (from this "
        f"directory), then open http://127.0.0.1:8000/?runs={runs} (the Training view)"
    )
