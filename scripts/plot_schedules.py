"""Draw docs/images/schedules.png: the learning rate of every `--schedule` over one run, from
`mygpt2.optim.get_lr` itself (max_steps 1000, warmup_ratio 0.05, lr 1e-3, min_lr 1e-4,
decay_ratio 0.2).

    python scripts/plot_schedules.py [OUT.png]
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from mygpt2.config import SCHEDULES, Config
from mygpt2.optim import get_lr


def main(out: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4))
    for schedule in SCHEDULES:
        cfg = Config()
        cfg.train.schedule = schedule
        steps = range(cfg.train.max_steps)
        ax.plot(steps, [get_lr(s, cfg) for s in steps], label=schedule)
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.set_title("--schedule (warmup_ratio 0.05, lr 1e-3, min_lr 1e-4, wsd decay_ratio 0.2)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/images/schedules.png"))
