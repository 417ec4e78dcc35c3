"""The training view's data: the rows a run has appended to `out_dir/metrics.jsonl` since the
page last asked, and, when it shows several runs, `mygpt2 compare`'s table of them.

The page polls with the byte offset and file identity it got last time and receives only new
rows, so a long run costs one small read per poll. A file being written is read up to its last
complete line (the rest comes next time); a run that starts again rewrites the file (a new
file, or a shorter one), and the page is told to start over. Lines that are not JSON objects
are counted and skipped, never fatal.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from mygpt2.serve.completions import APIError

MAX_READ = 4_000_000  # bytes per poll; the rest comes with the next one


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: such numbers (a diverged loss) become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_metrics(out_dir: str, offset: int = 0, file_id: str | None = None) -> dict[str, Any]:
    """Rows of `out_dir/metrics.jsonl` from byte `offset` of the file `file_id` names (from
    the start when the file is another or shorter now)."""
    if not out_dir:
        raise APIError(400, "give a run directory (an out_dir).", param="out_dir")
    folder = Path(out_dir).expanduser()
    if not folder.is_dir():
        raise APIError(
            404,
            f"no directory '{out_dir}' (relative paths start at the server's working "
            f"directory, {Path.cwd()}).",
            param="out_dir",
            code="not_found",
        )
    path = folder / "metrics.jsonl"
    try:
        fh = open(path, "rb")  # noqa: SIM115 (closed by the `with` below)
    except FileNotFoundError:  # no row yet: the page keeps asking
        return {"rows": [], "offset": 0, "file": None, "reset": False, "bad_lines": 0}
    except OSError as e:
        raise APIError(400, f"cannot read '{path}': {e.strerror}.", param="out_dir") from None
    with fh:
        st = os.fstat(fh.fileno())
        ident = f"{st.st_dev}:{st.st_ino}"
        reset = ident != file_id or st.st_size < offset
        start = 0 if reset else offset
        fh.seek(start)
        data = fh.read(MAX_READ)
    whole = data[: data.rfind(b"\n") + 1]  # a line still being written waits for next time
    rows, bad = [], 0
    for line in whole.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if isinstance(row, dict):
            rows.append({k: _finite(v) for k, v in row.items()})
        else:
            bad += 1
    return {
        "rows": rows,
        "offset": start + len(whole),
        "file": ident,
        "reset": reset,
        "bad_lines": bad,
    }


def compare(dirs: str, target: str = "") -> dict[str, Any]:
    """`mygpt2 compare`'s figures for the comma-separated run directories `dirs`, as JSON: the
    measure, the target, the notes, one summary per run (in the order given) and the config
    keys whose values differ. The figures come from mygpt2.compare, so page and command agree."""
    from mygpt2.compare import compare_runs, config_differences, summary

    names = [d.strip() for d in dirs.split(",") if d.strip()]
    if not names:
        raise APIError(400, "give the run directories to compare: ?dirs=DIR,DIR", param="dirs")
    goal = None
    if target:
        try:
            goal = float(target)
        except ValueError:
            raise APIError(
                400, f"target must be a number, got {target!r}.", param="target"
            ) from None
    c = compare_runs([os.path.expanduser(n) for n in names], goal)
    return {
        "metric": c.metric,
        "target": _finite(c.target),
        "target_given": c.target_given,
        "notes": c.notes,
        "runs": [
            {k: _finite(v) for k, v in summary(r, c.metric, c.target).items()} for r in c.runs
        ],
        "differences": [{"key": k, "values": v} for k, v in config_differences(c.runs)],
    }
