"""A sweep: one training run per point of a grid of settings, one after another, then compared.

`mygpt2 sweep --lr 1e-3,3e-3 --optimizer adamw,muon --max_steps 500` trains four runs, each in
its own `out_dir/<key=value,...>` (`out/lr=1e-3,optimizer=adamw`, ...), with every other flag
the same, and compares them (`mygpt2.compare`).

Design choices:
- Resumable without bookkeeping of its own: each point's state is its directory's checkpoint.
  Run the same command again after an interruption and finished runs are skipped, an
  interrupted one continues with `--resume` (bitwise as if never stopped), the rest start.
- One machine, one run at a time, in this process. To spread a grid over machines, a
  scheduler runs the `mygpt2 train` command of each point (`--dry_run` lists them); this
  module does not schedule.
- Flags are parsed by the command layer; here a point is its name, its command-line flags
  and its validated config.
- A flag whose one value is itself a comma-separated list (`LIST_FLAGS`: `--eval_tasks
  a.jsonl,b.jsonl`, two files in every run) is never cut into points at its commas; its points
  are separated by `;` instead (`--eval_tasks 'a.jsonl;a.jsonl,b.jsonl'`: one run with `a`,
  one with both), so each keeps its list whole.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mygpt2.checkpoint import load_checkpoint
from mygpt2.config import Config
from mygpt2.errors import MyGPT2Error
from mygpt2.train import train

# train flags whose value is a comma-separated list: their sweep points are split at `;`
LIST_FLAGS = ("eval_tasks",)


def split_axes(values: dict[str, str]) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Flags with comma-separated values (`;` for `LIST_FLAGS`) are the grid's axes; the
    others are fixed."""
    axes, fixed = {}, {}
    for key, value in values.items():
        sep = ";" if key in LIST_FLAGS else ","
        if sep not in value:
            fixed[key] = value
            continue
        parts = [v.strip() for v in value.split(sep)]
        if any(not p for p in parts):
            example = "'A;B,C'" if sep == ";" else "A,B,C"
            raise MyGPT2Error(
                f"sweep flag --{key} has an empty value in {value!r}: each value between "
                f"{'semicolons' if sep == ';' else 'commas'} is one run (--{key} {example})."
            )
        repeated = sorted({p for p in parts if parts.count(p) > 1})
        if repeated:
            raise MyGPT2Error(f"sweep flag --{key} repeats {', '.join(repeated)} in {value!r}.")
        axes[key] = parts
    if not axes:
        raise MyGPT2Error(
            "nothing to sweep: give at least one flag with comma-separated values, e.g. "
            "--lr 1e-3,3e-3 (each value one run)."
        )
    return axes, fixed


def grid(axes: dict[str, list[str]]) -> list[dict[str, str]]:
    """Every combination of the axes' values, the first flag's values varying slowest."""
    keys = list(axes)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*axes.values())]


def point_name(values: dict[str, str]) -> str:
    """`lr=1e-3,optimizer=muon`: the point's directory name (path separators made `_`)."""
    name = ",".join(f"{k}={v}" for k, v in values.items())
    return re.sub(r"[^\w.=,+-]", "_", name)


@dataclass
class Point:
    """One run of the sweep."""

    name: str  # key=value,... (also its directory's name)
    argv: list[str]  # its `mygpt2 train` flags, --out_dir included
    cfg: Config  # validated, from those flags


def progress(cfg: Config) -> tuple[str, int]:
    """Where a point's run stands: ('new', 0), ('interrupted', step) or ('finished', step).
    Finished: at max_steps, or stopped by reaching target_val_loss."""
    path = Path(cfg.run.out_dir) / "checkpoint.pt"
    if not path.is_file():
        return "new", 0
    ckpt = load_checkpoint(path)
    step, t = ckpt["step"], cfg.train
    # one epoch: the data fixed max_steps, and the checkpoint's config says what it was
    limit = ckpt["config"]["train"]["max_steps"] if t.single_pass else t.max_steps
    evals = [r for r in ckpt.get("metrics", []) if r.get("kind") == "eval" and r["step"] == step]
    goal = t.target_val_loss  # 0: none
    reached = bool(evals) and goal > 0 and evals[-1]["val_loss"] <= goal
    return ("finished" if step >= limit or reached else "interrupted"), step


def run_sweep(
    points: list[Point], say: Callable[[str], None], program: str = "mygpt2 train"
) -> int:
    """Train each point not finished yet (new ones from scratch, interrupted ones with
    --resume; with --overwrite, all from scratch). Returns the signal that stopped the sweep
    (0 when every point is finished or stopped by its own --stop_at)."""
    for i, point in enumerate(points, 1):
        cfg, argv = point.cfg, list(point.argv)
        state, step = ("new", 0) if cfg.run.overwrite else progress(cfg)
        where = f"[{i}/{len(points)}] {point.name}"
        if state == "finished":
            say(f"{where}: finished at step {step}; skipped.")
            continue
        if state == "interrupted":
            say(f"{where}: resuming from step {step}.")
            cfg.train.resume = True
            cfg.given["resume"] = "sweep"
            argv.append("--resume")
        else:
            say(f"{where}: training.")
        summary = train(cfg, argv, program)
        if summary["signal"]:
            say(f"\nsweep stopped during {point.name}; run the same command again to continue.")
            return summary["signal"]
    return 0
