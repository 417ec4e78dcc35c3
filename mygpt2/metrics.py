"""What a training run records: `metrics.jsonl`, `loss_plot.png`, and optional TensorBoard.

`MetricsLog` keeps the whole history in memory as well (it is small: one row per step), so a
checkpoint can carry it and a resumed run continues the same curves. The plot is redrawn from
that history at each evaluation and written atomically, so an open image viewer never sees a
half-written file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mygpt2.fileio import atomic_write


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
            self.out_dir.mkdir(parents=True, exist_ok=True)
            # rewrite the file from the history so a resumed run has no rows past its checkpoint
            lines = "".join(json.dumps(row) + "\n" for row in self.history)
            atomic_write(self.out_dir / "metrics.jsonl", lambda fh: fh.write(lines.encode()))
            if tensorboard:
                self.tb = _tensorboard_writer(self.out_dir / "tensorboard")

    def log(self, row: dict[str, Any]) -> None:
        """Record one row (must contain `step` and `kind`: 'train' or 'eval')."""
        self.history.append(row)
        if not self.enabled:
            return
        with open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.tb.add_scalar(f"{row['kind']}/{key}", value, row["step"])

    def plot(self, tokens_per_step: int) -> None:
        """Draw train and validation loss against steps, with tokens seen on a second axis."""
        if not self.enabled:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        train = [(r["step"], r["loss"]) for r in self.history if r["kind"] == "train"]
        val = [(r["step"], r["val_loss"]) for r in self.history if r["kind"] == "eval"]
        fig, ax = plt.subplots(figsize=(8, 5))
        if train:
            ax.plot(*zip(*train, strict=True), label="train", color="tab:blue", alpha=0.8)
        if val:
            ax.plot(*zip(*val, strict=True), "o-", label="validation", color="tab:orange")
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend()
        top = ax.secondary_xaxis(
            "top",
            functions=(lambda s: s * tokens_per_step / 1e6, lambda m: m * 1e6 / tokens_per_step),
        )
        top.set_xlabel("tokens seen (millions)")
        fig.tight_layout()
        atomic_write(
            self.out_dir / "loss_plot.png", lambda fh: fig.savefig(fh, format="png", dpi=110)
        )
        plt.close(fig)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _tensorboard_writer(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print(
            "tensorboard is not installed (pip install tensorboard); logging to metrics.jsonl only."
        )
        return None
    return SummaryWriter(str(path))
