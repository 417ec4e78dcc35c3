"""`mygpt2 inspect features`: browse an SAE's features on a text source.

Reads the SAE (`--sae_dir`), the model it was trained on (`--out_dir`, `--checkpoint` or
`--init_from`), and `--data`'s validation tokens (prepared as `mygpt2 sae eval` prepares them,
so the features are read on text the SAE did not train on), at most `--tokens` of them in rows
of the SAE's context (or the model's T). Writes `features.json` (the report,
`mygpt2.sae.features.browse`) and `index.html` (one self-contained page) into `--out`, and
prints a line per feature for at most 20 of them. `mygpt2 serve --features DIR` shows the same
report in the playground's Features tab.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from mygpt2.errors import MyGPT2Error, UsageError

FLAGS = ("sae_dir", "features", "tokens", "contexts", "out")
SHOWN = 20  # features printed to the terminal; the page has them all


def feature_ids(text: str) -> list[int]:
    """`0,5,12` or ranges `0-9,40`: the ids, in order, each once."""
    ids: list[int] = []
    for part in text.split(","):
        part = part.strip()
        lo, dash, hi = part.partition("-")
        try:
            if dash:
                first, last = int(lo), int(hi)
                if last < first:
                    raise ValueError
                ids += range(first, last + 1)
            else:
                ids.append(int(part))
        except ValueError:
            raise UsageError(
                f"--features takes ids and ranges such as 0,5,10-19; got {text!r}."
            ) from None
    return list(dict.fromkeys(ids))


def _whole(extras: dict[str, str], name: str, default: int, low: int) -> int:
    raw = extras.get(name, str(default)).replace("_", "")
    if not raw.isdigit() or int(raw) < low:
        raise UsageError(f"--{name} takes a whole number of at least {low}, got {extras[name]!r}.")
    return int(raw)


def show_features(cfg: Any, extras: dict[str, str]) -> None:
    """The `features` view: read, browse, write the JSON and the page, print a summary."""
    for name in ("sae_dir", "out"):
        if name not in extras:
            raise UsageError(
                "mygpt2 inspect features needs --sae_dir DIR, --data SRC and --out DIR "
                "(and the model: --out_dir, --checkpoint or --init_from)."
            )
    if "data" not in cfg.given:
        raise UsageError("mygpt2 inspect features needs --data SRC: the text to read it on.")
    chosen = feature_ids(extras["features"]) if "features" in extras else None
    tokens = _whole(extras, "tokens", 65_536, 1)
    top = _whole(extras, "contexts", 10, 1)
    out = Path(extras["out"])
    if out.exists() and not out.is_dir():
        raise MyGPT2Error(f"--out '{out}' is a file; give a directory for the page and the JSON.")

    import numpy as np

    from mygpt2.checkpoint import checkpoint_path, load_model_and_tokenizer
    from mygpt2.fileio import atomic_write, ensure_dir
    from mygpt2.guard import resolve_input_paths
    from mygpt2.prepare import ensure_prepared
    from mygpt2.runtime import pick_device
    from mygpt2.sae import check_fits, load
    from mygpt2.sae.features import browse, check_features
    from mygpt2.sae.features_html import page

    sae = load(extras["sae_dir"])
    check_features(chosen, sae.cfg.d_sae)  # before the model and the data
    resolve_input_paths(cfg)
    model, tok = load_model_and_tokenizer(cfg)
    model = model.to(pick_device(cfg.run.device)).eval()
    sae = sae.to(model.transformer.wte.weight.device)
    check_fits(model, sae)  # before the data is prepared
    context = min(sae.cfg.context_size or model.config.T, model.config.T)
    _, val, _ = ensure_prepared(cfg, tok, progress=sys.stderr.isatty())
    ids = np.asarray(val[:tokens], dtype=np.int64)

    def progress(done: int, total: int) -> None:
        if sys.stderr.isatty():
            print(f"\rreading {done}/{total} rows", end="", file=sys.stderr, flush=True)

    report = browse(model, sae, ids, tok, chosen, top=top, context=context, progress=progress)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    scratch = cfg.run.init_from == "scratch"
    model_name = str(checkpoint_path(cfg).resolve()) if scratch else cfg.run.init_from
    report = {
        "sae_dir": str(Path(extras["sae_dir"]).resolve()),
        "model": model_name,
        "data": f"{cfg.data.data} (validation tokens)",
        **report,
    }
    ensure_dir(out)
    doc = json.dumps(report, ensure_ascii=False)
    atomic_write(out / "features.json", lambda fh: fh.write(doc.encode("utf-8")))
    html = page(report, title=f"SAE features: {sae.cfg.hook_name}")
    atomic_write(out / "index.html", lambda fh: fh.write(html.encode("utf-8")))
    summarise(report)
    print(f"wrote {out / 'index.html'} and {out / 'features.json'}")


def summarise(report: dict[str, Any]) -> None:
    """A line per feature (at most SHOWN): density, largest activation, the token it fired on
    most strongly, the token it promotes most."""
    from mygpt2.sae.features import quoted

    features = report["features"]
    dead = sum(1 for f in features if not f["count"])
    print(
        f"{len(features)} features of {report['hook']} on {report['tokens']:,} tokens "
        f"({report['rows']} rows of {report['context']}); {dead} never fired"
    )
    print(f"{'feature':>8}  {'density':>8}  {'max':>8}  {'fires most on':<20}  promotes")
    for f in features[:SHOWN]:
        top = quoted(f["contexts"][0]["tokens"][f["contexts"][0]["at"]]) if f["contexts"] else "-"
        promotes = quoted(f["promotes"][0]["token"]) if f["promotes"] else "-"
        print(f"{f['id']:>8}  {f['density']:>8.2%}  {f['max']:>8.3g}  {top:<20}  {promotes}")
    if len(features) > SHOWN:
        print(f"... and {len(features) - SHOWN} more in the page")
