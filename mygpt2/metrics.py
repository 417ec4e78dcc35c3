"""What a training run records and shows: `metrics.jsonl`, `loss_plot.png`, optional
TensorBoard, and the messages and progress bar on the terminal.

`MetricsLog` keeps the whole history in memory as well (it is small: one row per step), so a
checkpoint can carry it and a resumed run continues the same curves. The plot is redrawn from
that history at each evaluation and written atomically, so an open image viewer never sees a
half-written file. Rows are appended through `fileio.append_text`, so a full disk or an
unwritable directory is a one-line `RunError`, not a traceback.

`Reporter` is the one place a training run prints: the resolved config, the start banner,
the progress bar, the stop message and the final line. The training loop hands it facts and
never calls `print`; only rank 0's reporter is enabled, so "only rank 0 prints" is decided
once, when it is made.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mygpt2.errors import MyGPT2Error
from mygpt2.fileio import append_text, atomic_write, ensure_dir


class MetricsLog:
    """Append-only metrics: one JSON line per train step and per evaluation."""

    def __init__(
        self,
        out_dir: str | Path,
        history: list[dict[str, Any]] | None = None,
        enabled: bool = True,
        tensorboard: bool = False,
    ):
        self.out_dir = Path(out_dir)
        self.history: list[dict[str, Any]] = list(history or [])
        self.enabled = enabled
        self.tb = None
        if enabled:
            ensure_dir(self.out_dir)
            # rewrite the file from the history so a resumed run has no rows past its checkpoint
            lines = "".join(json.dumps(row) + "\n" for row in self.history)
            atomic_write(self.out_dir / "metrics.jsonl", lambda fh: fh.write(lines.encode()))
            if tensorboard:
                self.tb = _tensorboard_writer(self.out_dir / "tensorboard")

    def log(self, row: dict[str, Any]) -> None:
        """Record one row (must contain `step` and `kind`: 'train', 'eval', 'data_change')."""
        self.history.append(row)
        if not self.enabled:
            return
        append_text(self.out_dir / "metrics.jsonl", json.dumps(row) + "\n")
        if self.tb is not None:
            for key, value in _scalars(row):
                self.tb.add_scalar(f"{row['kind']}/{key}", value, row["step"])

    def plot(self, tokens_per_step: int) -> None:
        """Draw train and validation loss against steps, with tokens seen on a second axis;
        beside it, when the run measured them, bits per byte (validation, eval_data) and the
        eval_tasks' accuracies."""
        if not self.enabled:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        evals = [r for r in self.history if r["kind"] == "eval"]
        train = [(r["step"], r["loss"]) for r in self.history if r["kind"] == "train"]
        val = [(r["step"], r["val_loss"]) for r in evals]
        bpb = {
            name: [(r["step"], r[key]) for r in evals if _finite(r.get(key))]
            for name, key in (("validation", "val_bpb"), ("eval_data", "eval_data_bpb"))
        }
        bpb = {name: points for name, points in bpb.items() if points}
        tasks = sorted({k.split("/", 1)[1] for r in evals for k in r if k.startswith("acc_norm/")})
        panels = 1 + bool(bpb) + bool(tasks)
        fig, axes = plt.subplots(1, panels, figsize=(8 + 5 * (panels - 1), 5), squeeze=False)
        ax = axes[0][0]
        if train:
            ax.plot(*zip(*train, strict=True), label="train", color="tab:blue", alpha=0.8)
        if val:
            ax.plot(*zip(*val, strict=True), "o-", label="validation", color="tab:orange")
        ax.set_ylabel("loss (nats/token)")
        extra = list(axes[0][1:])
        if bpb:
            bx = extra.pop(0)
            colors = {"validation": "tab:orange", "eval_data": "tab:green"}
            for name, points in bpb.items():
                bx.plot(*zip(*points, strict=True), "o-", label=name, color=colors[name])
            bx.set_ylabel("bits per byte (comparable across tokenizers)")
        if tasks:
            tx = extra.pop(0)
            for name in tasks:
                points = [
                    (r["step"], r[f"acc_norm/{name}"]) for r in evals if f"acc_norm/{name}" in r
                ]
                tx.plot(*zip(*points, strict=True), "o-", label=f"{name} (acc_norm)")
            tx.set_ylabel("multiple-choice accuracy")
        for a in axes[0]:
            a.set_xlabel("step")
            a.grid(alpha=0.3)
            if a.get_legend_handles_labels()[0]:
                a.legend()
            top = a.secondary_xaxis(
                "top",
                functions=(
                    lambda s: s * tokens_per_step / 1e6,
                    lambda m: m * 1e6 / tokens_per_step,
                ),
            )
            top.set_xlabel("tokens seen (millions)")
        fig.tight_layout()
        atomic_write(
            self.out_dir / "loss_plot.png", lambda fh: fig.savefig(fh, format="png", dpi=110)
        )
        plt.close(fig)
        self.plot_health()

    def plot_health(self) -> None:
        """health.png beside loss_plot.png, when the run records health rows."""
        rows = [r for r in self.history if r["kind"] == "health"]
        if self.enabled and rows:
            from mygpt2.dynamics.plots import save_health_png

            save_health_png(rows, self.out_dir / "health.png")

    def close(self) -> None:
        """Flush and close the TensorBoard writer, if any (idempotent)."""
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def _scalars(row: dict[str, Any], prefix: str = "") -> list[tuple[str, float]]:
    """The numbers of a row as TensorBoard tags: nested dicts and lists (a health row's layers
    and heads) joined by '/' (`layers/L0/attn_entropy/3`); `step` and `kind` left out."""
    items = row.items() if isinstance(row, dict) else enumerate(row)
    out = []
    for key, value in items:
        if prefix == "" and key in ("step", "kind"):
            continue
        tag = f"{prefix}{key}"
        if isinstance(value, (dict, list)):
            out += _scalars(value, tag + "/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append((tag, value))
    return out


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl; a last line cut short by a kill is left out."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise MyGPT2Error(f"cannot read '{path}': {e}") from None
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # the run was killed while appending it
                break
            raise MyGPT2Error(f"{path}, line {number}: not a JSON row ({line[:60]!r}).") from None
        if not isinstance(row, dict) or "step" not in row or "kind" not in row:
            raise MyGPT2Error(f"{path}, line {number}: not a metrics row (no step or kind).")
        rows.append(row)
    return rows


def _tensorboard_writer(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print(
            "tensorboard is not installed (pip install tensorboard); logging to metrics.jsonl only."
        )
        return None
    return SummaryWriter(str(path))


class Reporter:
    """The terminal side of a training run: messages and a progress bar, on rank 0 only."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bar: tqdm | None = None

    def say(self, text: str) -> None:
        """Print a message (flushed: runs are often watched through a pipe or a log file)."""
        if self.enabled:
            print(text, flush=True)

    def config(self, text: str) -> None:
        """The resolved config, before anything slow (tokenizing the corpus) starts."""
        self.say(text)

    def banner(
        self,
        *,
        params: int,
        device: Any,
        dtype: Any,
        processes: int,
        accum_steps: int,
        tokens_per_step: int,
        train_tokens: int,
        val_tokens: int,
        data_dir: str = "",
    ) -> None:
        """One line that says what is about to run (and where its token files are)."""
        self.say(
            f"\nmodel: {params / 1e6:.2f}M parameters | device {device} | "
            f"dtype {str(dtype).removeprefix('torch.')} | processes {processes} | "
            f"accum_steps {accum_steps} | {tokens_per_step:,} tokens/step | "
            f"data {train_tokens:,} train + {val_tokens:,} val tokens"
            + (f" in {data_dir}" if data_dir else "")
            + "\n"
        )

    def start(self, total: int, initial: int) -> None:
        """Open the progress bar at step `initial` of `total` (a resumed run starts midway)."""
        self.bar = tqdm(
            total=total,
            initial=initial,
            disable=not self.enabled,
            desc="train",
            unit="step",
            dynamic_ncols=True,
        )

    def step(self, row: dict[str, Any], val_loss: float | None = None) -> None:
        """Advance the bar by one step, showing a train row's figures and the last val loss."""
        if self.bar is None:
            return
        postfix = {
            "loss": f"{row['loss']:.4f}",
            "lr": f"{row['lr']:.2e}",
            "tok/s": f"{row['tokens_per_s']:,.0f}",
        }
        if row.get("grad_norm") is not None:
            postfix["gnorm"] = f"{row['grad_norm']:.2f}"
        if row.get("mfu") is not None:
            postfix["mfu"] = f"{row['mfu']:.0%}"
        if val_loss is not None:
            postfix["val"] = f"{val_loss:.4f}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        """Close the bar (idempotent), so that messages after it start on a clean line."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def stopped(self, step: int, max_steps: int, resume: str) -> None:
        """The run stopped early (SIGINT/SIGTERM or --stop_at) after saving a checkpoint."""
        self.close()
        self.say(f"\nstopped at step {step} of {max_steps}; resume with: {resume}")

    def nothing_to_do(self, step: int, max_steps: int, out_dir: str | Path, extend: str) -> None:
        """A resumed run that is already at (or past) max_steps."""
        where = "already finished" if step == max_steps else f"past max_steps {max_steps}"
        self.say(
            f"the run in '{out_dir}' is {where} (step {step} of {max_steps}); nothing to do. "
            f"To train further, resume with a larger --max_steps, e.g.: {extend}"
        )

    def done(self, step: int, train_loss: float, best_val_loss: float, out_dir: str | Path) -> None:
        """The run reached max_steps."""
        self.close()
        self.say(
            f"\ndone: {step} steps, final train loss {train_loss:.4f}, "
            f"best val loss {best_val_loss:.4f}; outputs in '{out_dir}'."
        )


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
