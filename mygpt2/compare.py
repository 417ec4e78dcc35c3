"""Comparing training runs: their curves in one picture, a table, and how their configs differ.

A run is an out_dir: `metrics.jsonl` (train and eval rows) and, when there is one,
`checkpoint.pt` (its resolved config and its tokenizer's fingerprint). `mygpt2 compare` and
`mygpt2 sweep` both use this module; it returns text and writes the picture, and never prints.

Design choices:
- The time axis is `elapsed_s`, the seconds spent in training steps (what speedruns count). A
  log written before rows carried it gets an estimate from each step's tokens and tokens/s.
- Losses per token of different tokenizers do not compare: runs with different tokenizers are
  ranked and plotted by bits per byte (`val_bpb` in the eval rows), and the table says so.
- Time to a target: the first evaluation at or below `target`; without one given, the loss
  every run reached (the worst of the runs' best), so the column is never empty.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mygpt2.checkpoint import load_checkpoint
from mygpt2.config import PER_INVOCATION, flatten
from mygpt2.errors import MyGPT2Error
from mygpt2.fileio import atomic_write
from mygpt2.metrics import read_metrics

# keys that say where a run went, not how it trained
NOT_COMPARED = PER_INVOCATION | {"out_dir"}


@dataclass
class RunRecord:
    """What one run directory says about its run."""

    name: str  # the directory as given
    rows: list[dict[str, Any]]
    config: dict[str, Any] | None  # flat; None without a checkpoint
    tokenizer: str | None  # the tokenizer's fingerprint; None without a checkpoint
    seconds: dict[int, float] = field(default_factory=dict)  # step -> elapsed training seconds

    def kind(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.rows if r.get("kind") == kind]


def elapsed_by_step(rows: list[dict[str, Any]]) -> dict[int, float]:
    """Training seconds at each train step: `elapsed_s` where logged, else the sum of each
    step's tokens / tokens_per_s (logs written before elapsed_s existed)."""
    seconds, total, tokens = {}, 0.0, 0
    for r in rows:
        if r.get("kind") != "train":
            continue
        if r.get("elapsed_s") is not None:
            total = r["elapsed_s"]
        elif r.get("tokens_per_s"):
            total += (r["tokens"] - tokens) / r["tokens_per_s"]
        tokens = r.get("tokens", tokens)
        seconds[r["step"]] = total
    return seconds


def load_run(directory: str | Path) -> RunRecord:
    """A run directory's metrics, and its config and tokenizer when it has a checkpoint."""
    path = Path(directory)
    if not path.is_dir():
        raise MyGPT2Error(
            f"'{directory}' is not a directory; give training runs' out_dirs (each holds "
            "metrics.jsonl)."
        )
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise MyGPT2Error(
            f"'{directory}' has no metrics.jsonl, so it holds no training run to compare "
            "(mygpt2 train writes one into its --out_dir)."
        )
    rows = read_metrics(metrics)
    if not any(r["kind"] == "train" for r in rows):
        raise MyGPT2Error(f"'{metrics}' has no training steps yet; nothing to compare.")
    config = tokenizer = None
    if (path / "checkpoint.pt").is_file():
        ckpt = load_checkpoint(path / "checkpoint.pt")
        config = flatten(ckpt["config"])
        tokenizer = (ckpt.get("tokenizer") or {}).get("fingerprint")
    return RunRecord(str(directory), rows, config, tokenizer, elapsed_by_step(rows))


# ----------------------------------------------------------------------------- the comparison


@dataclass
class Comparison:
    """Runs side by side, and the measure they are compared by."""

    runs: list[RunRecord]
    metric: str  # "val_loss", or "val_bpb" when the tokenizers differ
    target: float | None  # the loss (or bits per byte) whose time to reach is shown
    target_given: bool
    notes: list[str]


def compare_runs(directories: list[str | Path], target: float | None = None) -> Comparison:
    """Load the runs and choose the measure: val loss, or bits per byte across tokenizers."""
    if not directories:
        raise MyGPT2Error("give at least one run directory to compare.")
    runs = [load_run(d) for d in directories]
    notes, metric = [], "val_loss"
    tokenizers = {r.tokenizer for r in runs if r.tokenizer is not None}
    if len(tokenizers) > 1:
        missing = [r.name for r in runs if not any("val_bpb" in e for e in r.kind("eval"))]
        if missing:
            notes.append(
                "the runs use different tokenizers, so their losses per token do not compare; "
                f"bits per byte would, but {', '.join(missing)} logged none (trained before "
                "val_bpb was recorded). Losses are shown as they are."
            )
        else:
            metric = "val_bpb"
            notes.append(
                "the runs use different tokenizers: their losses per token do not compare, so "
                "they are compared by validation bits per byte (val_bpb)."
            )
    given = target is not None
    if not given:
        bests = [min(values) for r in runs if (values := _values(r, metric))]
        target = max(bests) if len(bests) == len(runs) else None
    return Comparison(runs, metric, target, given, notes)


def _values(run: RunRecord, metric: str) -> list[float]:
    return [e[metric] for e in run.kind("eval") if e.get(metric) is not None]


def summary(run: RunRecord, metric: str, target: float | None) -> dict[str, Any]:
    """One row of the table: final and best of `metric`, throughput, time, time to target."""
    trains, evals = run.kind("train"), [e for e in run.kind("eval") if e.get(metric) is not None]
    last = trains[-1]
    wall = run.seconds.get(last["step"], 0.0)
    reached = next((e for e in evals if target is not None and e[metric] <= target), None)
    return {
        "run": run.name,
        "steps": last["step"],
        "tokens": last.get("tokens"),
        "final": evals[-1][metric] if evals else None,
        "best": min(e[metric] for e in evals) if evals else None,
        "bpb": next((e["val_bpb"] for e in reversed(evals) if e.get("val_bpb") is not None), None),
        "tokens_per_s": last["tokens"] / wall if wall and last.get("tokens") else None,
        "wall_s": wall or None,
        "to_target_s": run.seconds.get(reached["step"]) if reached else None,
        "to_target_step": reached["step"] if reached else None,
    }


def _cell(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_table(c: Comparison) -> str:
    """The runs as a table, best first (by their best value of the measure)."""
    rows = [summary(r, c.metric, c.target) for r in c.runs]
    rows.sort(key=lambda s: math.inf if s["best"] is None else s["best"])
    unit = "val bpb" if c.metric == "val_bpb" else "val loss"
    if c.target is None:
        to = "to target"
    else:
        to = f"to {c.target:.4f}" + ("" if c.target_given else " (reached by all)")
    header = ["run", "steps", "tokens", f"final {unit}", f"best {unit}", "val bpb", "tok/s"]
    header += ["train s", f"time {to}"]
    table = [header]
    for s in rows:
        reached = "-"
        if s["to_target_s"] is not None:
            reached = f"{s['to_target_s']:.1f} s (step {s['to_target_step']})"
        table.append(
            [
                s["run"],
                str(s["steps"]),
                _cell(s["tokens"], ",d"),
                _cell(s["final"], ".4f"),
                _cell(s["best"], ".4f"),
                _cell(s["bpb"], ".4f"),
                _cell(s["tokens_per_s"], ",.0f"),
                _cell(s["wall_s"], ".1f"),
                reached,
            ]
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def config_differences(runs: list[RunRecord]) -> list[tuple[str, list[str]]]:
    """(key, each run's value) for every config key whose values differ between the runs."""
    known = [r.config for r in runs if r.config is not None]
    keys = sorted({k for cfg in known for k in cfg} - NOT_COMPARED)
    diffs = []
    for key in keys:
        values = ["?" if r.config is None else str(r.config.get(key, "-")) for r in runs]
        if len({v for v in values if v != "?"}) > 1:
            diffs.append((key, values))
    return diffs


def format_differences(runs: list[RunRecord]) -> str:
    """The config keys that differ: one row per run, one column per key ('?': no checkpoint)."""
    if not any(r.config for r in runs):
        return "config differences: unknown (no run has a checkpoint.pt with its config)."
    diffs = config_differences(runs)
    if not diffs:
        return "config differences: none (apart from out_dir)."
    table = [["run", *(k for k, _ in diffs)]]
    table += [[r.name, *(v[i] for _, v in diffs)] for i, r in enumerate(runs)]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in table]
    return "config differences:\n" + "\n".join(line.rstrip() for line in lines)


def report(c: Comparison) -> str:
    """Everything `mygpt2 compare` prints: notes, the table, the config differences."""
    parts = [f"note: {n}" for n in c.notes]
    parts += [format_table(c), format_differences(c.runs)]
    return "\n\n".join(parts)


# ----------------------------------------------------------------------------- the picture


def plot(c: Comparison, path: str | Path) -> None:
    """Validation (top) and training (bottom) curves against steps, tokens and seconds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 8), sharey="row", squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    xs = {"step": "step", "tokens": "tokens seen", "seconds": "training seconds"}
    for i, run in enumerate(c.runs):
        color = colors[i % len(colors)]
        evals = [e for e in run.kind("eval") if e.get(c.metric) is not None]
        trains = run.kind("train")
        for col, x in enumerate(xs):
            val = [(_x(run, e, x), e[c.metric]) for e in evals]
            val = [(a, b) for a, b in val if a is not None]
            if val:
                axes[0][col].plot(*zip(*val, strict=True), "o-", ms=3, color=color, label=run.name)
            tr = [(_x(run, r, x), r["loss"]) for r in trains]
            tr = [(a, b) for a, b in tr if a is not None and b is not None]
            if tr:
                axes[1][col].plot(*zip(*tr, strict=True), color=color, alpha=0.7, lw=1)
    unit = "bits per byte" if c.metric == "val_bpb" else "nats/token"
    for col, label in enumerate(xs.values()):
        axes[0][col].set_title(f"validation ({unit}) vs {label}")
        axes[1][col].set_title(f"training loss vs {label}")
        axes[1][col].set_xlabel(label)
        for row in (0, 1):
            axes[row][col].grid(alpha=0.3)
    if c.target is not None:
        for col in range(3):
            axes[0][col].axhline(c.target, color="gray", ls="--", lw=0.8)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=100))
    plt.close(fig)


def _x(run: RunRecord, row: dict[str, Any], axis: str) -> float | None:
    if axis == "step":
        return row["step"]
    if axis == "tokens":
        return row.get("tokens")
    return row.get("elapsed_s", run.seconds.get(row["step"]))
