"""A run's checkpoint series: weights-only snapshots that show how the network learned.

With `keep_checkpoints log` a run keeps `out_dir/checkpoints/step_0000001.safetensors` at
steps 1, 2, 4, 8, ... and at every evaluation; with `all`, one at every save of
`checkpoint.pt` (every evaluation, every `checkpoint_interval`, the clock, the end). Early
training changes fastest, so log-spaced steps see it without filling the disk later on.

Design choices:
- safetensors, not `torch.save`: a snapshot is plain tensors and a string header, small, safe
  to share and to load from anyone (nothing in it can run code), and readable by any
  safetensors loader. The tied output head is not stored twice.
- Each file says what it is in its metadata (strings, as safetensors wants): `step`,
  `tokens` seen, `val_loss` (when the step was evaluated, else empty), `train_loss`,
  `config` and `tokenizer` as JSON; `load_snapshot` builds the model from those alone.
- The resumable `checkpoint.pt` stays as it is; snapshots are extra. A snapshot that cannot
  be written (a full disk) is warned of once and training goes on: the series has a gap,
  the run is intact. A new (not resumed) run first removes the snapshots of a run it
  replaces, so one directory never mixes two runs' series.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mygpt2.config import Config
from mygpt2.errors import MyGPT2Error, RunError
from mygpt2.fileio import atomic_write
from mygpt2.model import GPT

SERIES_DIR = "checkpoints"
NAME = re.compile(r"step_(\d{7,})\.safetensors")
FORMAT = "1"


def snapshot_due(mode: str, step: int, evaluated: bool, saved: bool) -> bool:
    """Whether `keep_checkpoints` = `mode` keeps a snapshot after `step`."""
    if mode == "log":
        return evaluated or (step > 0 and step & (step - 1) == 0)
    if mode == "all":
        return saved or evaluated
    return False


def snapshot_path(out_dir: str | os.PathLike, step: int) -> Path:
    """`out_dir/checkpoints/step_XXXXXXX.safetensors`."""
    return Path(out_dir) / SERIES_DIR / f"step_{step:07d}.safetensors"


def write_snapshot(path: str | os.PathLike, model: GPT, info: dict[str, Any]) -> None:
    """The model's weights (float32, without the tied head) and `info` as metadata, written
    atomically. Values of `info` are stored as strings (dicts as JSON, None as empty)."""
    from safetensors.torch import save

    weights = {
        k: v.detach().float().contiguous().cpu()
        for k, v in model.state_dict().items()
        if k != "lm_head.weight"
    }
    meta = {"format": "pt", "mygpt2_series": FORMAT}
    for key, value in info.items():
        if isinstance(value, dict):
            meta[key] = json.dumps(value)
        else:
            meta[key] = "" if value is None else str(value)
    data = save(weights, metadata=meta)
    atomic_write(path, lambda fh: fh.write(data))


class SnapshotWriter:
    """Writes a run's snapshots; a failure is warned of once (through `say`), never raised."""

    def __init__(self, out_dir: str | os.PathLike, fresh: bool, say: Callable[[str], None]):
        self.directory = Path(out_dir) / SERIES_DIR
        self.say = say
        self.warned = False
        self._tidy(fresh)

    def _tidy(self, fresh: bool) -> None:
        # a killed run's unfinished files; on a new run, the series of the run it replaces
        patterns = [".step_*.tmp"] + (["step_*.safetensors"] if fresh else [])
        for pattern in patterns:
            for stale in self.directory.glob(pattern):
                with contextlib.suppress(OSError):
                    stale.unlink()

    def write(self, model: GPT, step: int, info: dict[str, Any]) -> bool:
        """Snapshot `model` at `step` with `info` (tokens, val_loss, ...); False if it failed."""
        path = self.directory / snapshot_path("", step).name
        try:
            write_snapshot(path, model, {"step": step, **info})
        except (RunError, OSError) as e:
            if not self.warned:
                self.warned = True
                self.say(
                    f"warning: snapshot at step {step} not kept ({e}). Training goes on and "
                    "checkpoint.pt is still saved; later snapshots are tried again without "
                    "further warnings, so the series may have gaps."
                )
            return False
        return True


# ----------------------------------------------------------------------------- reading
@dataclass
class Snapshot:
    """One file of a series and what its metadata says."""

    path: Path
    step: int
    tokens: int
    val_loss: float | None
    train_loss: float | None
    config: Config
    tokenizer: dict[str, str]


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def read_snapshot(path: str | os.PathLike) -> Snapshot:
    """A snapshot's metadata (the weights stay on disk)."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as e:  # a damaged or foreign file
        raise MyGPT2Error(f"'{path}' is not a readable safetensors file ({e}).") from None
    if meta.get("mygpt2_series") is None or "config" not in meta:
        raise MyGPT2Error(f"'{path}' is not a mygpt2 series snapshot (no series metadata).")
    try:
        config = Config.from_saved(json.loads(meta["config"]))
        tokenizer = json.loads(meta.get("tokenizer") or "{}")
        step = int(meta["step"])
    except (ValueError, KeyError, MyGPT2Error) as e:
        raise MyGPT2Error(f"'{path}': its series metadata is damaged ({e}).") from None
    return Snapshot(
        path=path,
        step=step,
        tokens=int(_number(meta.get("tokens", "")) or 0),
        val_loss=_number(meta.get("val_loss", "")),
        train_loss=_number(meta.get("train_loss", "")),
        config=config,
        tokenizer=tokenizer,
    )


def list_snapshots(out_dir: str | os.PathLike) -> list[Snapshot]:
    """The snapshots of `out_dir`, by step; an error that says how to make them if none."""
    directory = Path(out_dir) / SERIES_DIR
    paths = sorted(
        (p for p in directory.glob("step_*.safetensors") if NAME.fullmatch(p.name)),
        key=lambda p: int(NAME.fullmatch(p.name)[1]),
    )
    if not paths:
        where = f"'{directory}' holds none" if directory.is_dir() else f"there is no '{directory}'"
        raise MyGPT2Error(
            f"no checkpoint series in '{out_dir}': {where}. Snapshots are kept by training "
            f"with --keep_checkpoints log (steps 1, 2, 4, 8, ... and every evaluation) or all, "
            f"e.g. mygpt2 train --out_dir {out_dir} --keep_checkpoints log ..."
        )
    return [read_snapshot(p) for p in paths]


def load_snapshot(snapshot: Snapshot | str | os.PathLike) -> GPT:
    """The GPT a snapshot holds, on the CPU in float32, in eval mode."""
    from safetensors.torch import load_file

    if not isinstance(snapshot, Snapshot):
        snapshot = read_snapshot(snapshot)
    model = GPT(snapshot.config.model)
    weights = load_file(str(snapshot.path))
    weights["lm_head.weight"] = weights.get("transformer.wte.weight", torch.empty(0))
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else "mismatch"
        raise MyGPT2Error(
            f"'{snapshot.path}' does not match the model its metadata describes ({first}). "
            "The file is damaged or was edited."
        ) from None
    return model.eval()


def text_windows(snapshot: Snapshot, count: int = 8) -> torch.Tensor:
    """(count, T + 1) token ids from the run's validation tokens, evenly spaced, the same for
    every snapshot of a series (the token files are prepared again if they are gone)."""
    from mygpt2.prepare import ensure_prepared
    from mygpt2.tokenizer import load_tokenizer

    cfg = snapshot.config
    tok = load_tokenizer(cfg.tokenizer)
    saved = snapshot.tokenizer.get("fingerprint")
    if saved and saved != tok.fingerprint():
        raise MyGPT2Error(
            f"the series was trained with tokenizer {snapshot.tokenizer.get('name')}, but "
            f"'{cfg.tokenizer.tokenizer_path}' now holds another; the text metrics need the "
            "tokenizer it was trained with."
        )
    _, val_tokens, _ = ensure_prepared(cfg, tok, progress=False)
    width = cfg.model.T + 1
    if len(val_tokens) < width:
        raise MyGPT2Error(
            f"the run's validation split has {len(val_tokens)} tokens, fewer than one window "
            f"of T + 1 = {width}; the text metrics cannot be measured."
        )
    starts = torch.linspace(0, len(val_tokens) - width, count).long().unique().tolist()
    return torch.stack(
        [torch.from_numpy(val_tokens[s : s + width].astype("int64")) for s in starts]
    )
