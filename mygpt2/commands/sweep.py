"""`mygpt2 sweep`: train a grid of settings one run after another, then compare the runs."""

from __future__ import annotations

import shlex
from pathlib import Path

from mygpt2.commands.args import Command, help_text, parse, split_flags, wants_help
from mygpt2.commands.train import COMMAND as TRAIN
from mygpt2.config import FALSE_WORDS
from mygpt2.errors import MyGPT2Error, UsageError

COMMAND = Command(
    name="sweep",
    usage="""usage: mygpt2 sweep --FLAG V1,V2[,...] [--FLAG V1,V2 ...] [--FLAG VALUE ...] [--dry_run]

Train one run per combination of the comma-separated values (any flag of mygpt2 train; the
others are the same for every run), one after another, each in --out_dir/<key=value,...>,
then print and plot their comparison (--out_dir/compare.png; see mygpt2 compare). Run the same
command again after an interruption: finished runs are skipped, an interrupted one resumes
where it stopped. --dry_run prints each run's mygpt2 train command instead (one per line,
for a scheduler that spreads them over machines: docs/EXPERIMENTS.md). Example:

  mygpt2 sweep --lr 1e-3,3e-3,1e-2 --optimizer adamw,muon --max_steps 500 --out_dir sweep1

Boolean flags take their values with '=': --compile=true,false. A flag whose value is itself
a list keeps its commas in every run (--eval_tasks a.jsonl,b.jsonl: both files in each run);
to sweep it, separate its runs' values with ';' (quoted: --eval_tasks 'a.jsonl;a.jsonl,b.jsonl').""",
    sections=dict(TRAIN.sections),
    extra={
        "dry_run": "print each run's mygpt2 train command; train nothing",
        "target": "the comparison's time-to-loss column (default: the loss all runs reached)",
    },
)


def cli(argv: list[str]) -> int:
    if wants_help(argv):
        print(help_text(COMMAND))
        return 0
    bare = ("--dry_run", "--dry-run")  # a switch, like the boolean config flags
    values, positional = split_flags([a for a in argv if a not in bare], COMMAND)
    if positional:
        raise UsageError(f"unexpected argument '{positional[0]}': flags look like --name value.")
    given = values.pop("dry_run", "false").lower()
    dry_run = any(a in bare for a in argv) or given not in FALSE_WORDS
    target = values.pop("target", None)
    values.pop("resume", None)  # the sweep resumes what needs it on its own
    out_dir = values.pop("out_dir", "out")

    from mygpt2.sweep import Point, grid, point_name, split_axes

    try:
        axes, fixed = split_axes(values)
    except MyGPT2Error as e:
        raise UsageError(str(e)) from None
    points = []
    for combo in grid(axes):  # every point's flags are checked before anything trains
        name = point_name(combo)
        flags = {**fixed, **combo, "out_dir": str(Path(out_dir) / name)}
        point_argv = [f"--{k}={v}" for k, v in flags.items()]
        try:
            cfg = parse(point_argv, TRAIN).config
        except MyGPT2Error as e:
            raise UsageError(f"sweep point {name}: {e}") from None
        points.append(Point(name, point_argv, cfg))
    if dry_run:
        for point in points:
            print(shlex.join(["mygpt2", "train", *point.argv]))
        return 0

    from mygpt2.compare import compare_runs, plot, report
    from mygpt2.guard import exit_code
    from mygpt2.sweep import run_sweep

    print(f"sweep: {len(points)} runs in {out_dir}: {', '.join(p.name for p in points)}")
    signal = run_sweep(points, print)
    if signal:
        return exit_code({"signal": signal})
    goal = float(target) if target is not None else None
    if goal is None and "target_val_loss" in fixed:
        goal = points[0].cfg.train.target_val_loss or None
    comparison = compare_runs([p.cfg.run.out_dir for p in points], goal)
    print("\n" + report(comparison))
    picture = Path(out_dir) / "compare.png"
    plot(comparison, picture)
    print(f"\nwrote {picture}")
    return 0
