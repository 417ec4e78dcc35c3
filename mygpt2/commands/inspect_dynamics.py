"""`mygpt2 inspect health` and `mygpt2 inspect series`: how a training run learned.

- `health` reads the `health` rows of `out_dir/metrics.jsonl` (written with
  `--health_interval N`), redraws `health.png` and prints the last row per layer and the
  warnings of `mygpt2.dynamics.health.health_warnings`.
- `series` loads each snapshot of `out_dir/checkpoints` (written with `--keep_checkpoints log`
  or `all`), measures the metrics of `mygpt2.dynamics.metrics.METRICS` on it, prints a table
  and plots each metric against tokens seen. A metric that needs a longer context than the
  model's T is skipped with a note.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mygpt2.config import Config
from mygpt2.errors import MyGPT2Error, UsageError
from mygpt2.metrics import read_metrics


def read_health_rows(out_dir: Path) -> list[dict[str, Any]]:
    """The `health` rows of `out_dir/metrics.jsonl`, with a message that says how to get some."""
    path = out_dir / "metrics.jsonl"
    if not path.is_file():
        raise MyGPT2Error(f"no metrics.jsonl in '{out_dir}': is it a training run's out_dir?")
    rows = [r for r in read_metrics(path) if r["kind"] == "health"]
    if not rows:
        raise MyGPT2Error(
            f"'{path}' has no health rows: train with --health_interval N (say 50) to record "
            "per-layer statistics every N steps (--resume continues a run with it)."
        )
    return rows


def show_health(cfg: Config, extras: dict[str, str]) -> None:
    """Redraw health.png, print the last health row per layer and the warnings."""
    from mygpt2.dynamics.health import health_warnings
    from mygpt2.dynamics.plots import save_health_png

    out_dir = Path(cfg.run.out_dir)
    rows = read_health_rows(out_dir)
    png = extras.get("png", str(out_dir / "health.png"))
    save_health_png(rows, png)
    last = rows[-1]
    print(
        f"health at step {last['step']} ({len(rows)} health rows), gradient norm "
        f"{last['grad_norm']:.3g}, heads on the first token {last['collapsed_heads']:.0%}"
    )
    print(
        f"{'layer':>6}  {'grad norm':>10}  {'update':>8}  {'resid rms':>9}  {'entropy':>7}  "
        f"{'dead':>5}"
    )
    for name, layer in last["layers"].items():
        entropy = layer.get("attn_entropy")
        cells = [
            _cell(layer.get("grad_norm"), 10, ".3g"),
            _cell(layer.get("update_ratio"), 8, ".1e"),
            _cell(layer.get("resid_rms"), 9, ".3g"),
            _cell(sum(entropy) / len(entropy) if entropy else None, 7, ".2f"),
            _cell(layer.get("dead_frac"), 5, ".0%"),
        ]
        print(f"{name:>6}  " + "  ".join(cells))
    warnings = health_warnings(rows)
    print("\n".join(f"warning: {w}" for w in warnings) if warnings else "no warnings.")
    print(f"wrote {png}")


def _cell(value: float | None, width: int, spec: str) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}{spec}}"


def show_series(cfg: Config, extras: dict[str, str]) -> None:
    """Measure each --metric on every snapshot, print a table, write one PNG per metric."""
    import torch

    from mygpt2.dynamics.metrics import METRICS, ContextTooShortError, measure
    from mygpt2.dynamics.plots import save_series_png
    from mygpt2.dynamics.series import list_snapshots, load_snapshot, text_windows

    out_dir = Path(cfg.run.out_dir)
    names = [m.strip() for m in extras.get("metric", "induction").split(",") if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise UsageError(
            f"unknown --metric {', '.join(unknown) or '(empty)'}; choose from "
            f"{', '.join(METRICS)} (comma-separated for several)."
        )
    try:
        count = int(extras.get("windows", 8))
    except ValueError:
        raise UsageError(f"--windows takes a whole number, got {extras['windows']!r}.") from None
    if count < 1:
        raise UsageError(f"--windows must be at least 1, got {count}.")
    snapshots = list_snapshots(out_dir)
    print(
        f"{len(snapshots)} snapshots in {out_dir / 'checkpoints'}: steps "
        f"{', '.join(str(s.step) for s in snapshots)}"
    )
    try:  # the text metrics read it; the random-token metrics draw their tokens from it
        windows = text_windows(snapshots[-1], count)
    except MyGPT2Error as e:
        if any(METRICS[m].reads_text for m in names):
            raise
        windows = None
        print(f"note: random tokens come from the whole vocabulary: {e}")
    if windows is not None and not all(METRICS[m].reads_text for m in names):
        print(f"random tokens are drawn from the {len(windows.unique())} token ids in the text")
    results: dict[str, list[torch.Tensor]] = {m: [] for m in names}
    for snap in snapshots:
        model = load_snapshot(snap)
        for name in list(results):
            try:
                results[name].append(measure(model, name, windows))
            except ContextTooShortError as e:
                print(f"note: skipping {name}: {e}")
                del results[name]
    if not results:
        raise MyGPT2Error("every metric asked for was skipped; nothing to show.")
    tokens = [s.tokens for s in snapshots]
    losses = [float(v) for v in results["val_loss"]] if "val_loss" in results else None
    losses = losses or [s.val_loss for s in snapshots]
    model_cfg = snapshots[-1].config.model
    for name, values in results.items():
        grid = torch.stack(values)  # (snapshots, lines)
        labels = METRICS[name].labels(model_cfg)
        print_series(name, snapshots, grid, labels)
        png = _png_path(extras.get("png"), out_dir, name, len(results) > 1)
        with_loss = losses if name != "val_loss" and any(v is not None for v in losses) else None
        title = f"{name} across {len(snapshots)} snapshots of {out_dir}"
        save_series_png(tokens, grid, labels, png, METRICS[name].ylabel, title, with_loss)
        print(f"wrote {png}")


def _png_path(given: str | None, out_dir: Path, name: str, several: bool) -> str:
    if given is None:
        return str(out_dir / f"series_{name}.png")
    if not several:
        return given
    path = Path(given)  # one picture per metric: name it in the file
    return str(path.with_name(f"{path.stem}_{name}{path.suffix or '.png'}"))


def print_series(name: str, snapshots: list[Any], grid: Any, labels: list[str]) -> None:
    """One row per snapshot; many values (heads) show the best three."""
    print(f"\n{name}:")
    few = len(labels) <= 6
    head = "  ".join(f"{lab:>9}" for lab in labels) if few else "the three largest"
    print(f"{'step':>8}  {'tokens':>11}  {head}")
    for snap, row in zip(snapshots, grid, strict=True):
        if few:
            cells = "  ".join(f"{float(v):>9.4f}" for v in row)
        else:
            top = row.topk(min(3, len(labels)))
            cells = "  ".join(
                f"{labels[i]} {float(v):.3f}"
                for v, i in zip(top.values, top.indices.tolist(), strict=True)
            )
        print(f"{snap.step:>8}  {snap.tokens:>11,}  {cells}")
