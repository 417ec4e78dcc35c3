"""The browse report as one self-contained HTML page (no network, no files beside it).

Every text from the data (tokens, descriptions) goes through `html.escape` before it reaches
the page, attribute values with quotes escaped too: a token such as `<script>` is shown, never
run. The page's only script filters the features by id or token (read from `data-` attributes
with `JSON.parse`, written into the page with `textContent`); everything else is plain HTML
and inline SVG, so it reads the same with scripts off. Features that never fired are listed by
id in one line instead of a section each.
"""

from __future__ import annotations

import html
import json
from typing import Any

from mygpt2.sae.features import quoted

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:1em;color:#222}
h1{font-size:1.3em} h2{font-size:1.05em;margin:0 0 .3em}
section{border-top:1px solid #ddd;padding:.8em 0}
.stats{color:#555;font-size:.92em}
.ctx{font:13px/1.7 ui-monospace,monospace;white-space:pre-wrap;margin:.15em 0}
.ctx span{border-radius:2px} .ctx mark{outline:2px solid #d35400;background:#f5b041}
.act{color:#a04000;font-size:.85em;margin-left:.6em}
.cols{display:flex;gap:2em;flex-wrap:wrap} table{border-collapse:collapse;font-size:.9em}
td{padding:0 .5em} td.tok{font-family:ui-monospace,monospace;white-space:pre}
#search{font-size:1em;padding:.3em;width:22em} .hint{color:#777;font-size:.9em}
"""

SCRIPT = """
const box = document.getElementById('search'), note = document.getElementById('found');
box.addEventListener('input', () => {
  const q = box.value, t = q.trim(), byId = /^#?\\d+$/.test(t) && (t[0] === '#' || t === q);
  let shown = 0;
  for (const s of document.querySelectorAll('section.feature')) {
    let ok = q === '';
    if (!ok && byId) ok = s.dataset.id === t.replace('#', '');
    if (!ok && !byId) {
      const toks = JSON.parse(s.dataset.tokens);
      ok = toks.some(x => x === q || x.trim().toLowerCase() === t.toLowerCase());
    }
    s.hidden = !ok; shown += ok ? 1 : 0;
  }
  note.textContent = q === '' ? '' : shown + ' features';
});
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _shown(token: str) -> str:
    """A token's text made visible: newlines and tabs as symbols (the line stays one line)."""
    return token.replace("\n", "↵").replace("\t", "⇥").replace("\r", "␍")


def _histogram_svg(counts: list[int], edges: list[float]) -> str:
    """Bars of the nonzero bins' range, heights relative to the tallest, on a log x axis."""
    used = [i for i, c in enumerate(counts) if c]
    if not used:
        return ""
    lo, hi = used[0], used[-1] + 1
    tallest, width, height = max(counts), 240, 60
    bar = width / (hi - lo)
    rects = "".join(
        f'<rect x="{(i - lo) * bar:.1f}" y="{height - counts[i] / tallest * height:.1f}" '
        f'width="{max(bar - 1, 1):.1f}" height="{counts[i] / tallest * height:.1f}">'
        f"<title>{edges[i]:.3g} to {edges[i + 1]:.3g}: {counts[i]} tokens</title></rect>"
        for i in range(lo, hi)
    )
    return (
        f'<svg width="{width}" height="{height + 14}" role="img" fill="#e67e22">{rects}'
        f'<text x="0" y="{height + 12}" font-size="10" fill="#555">{edges[lo]:.3g}</text>'
        f'<text x="{width}" y="{height + 12}" font-size="10" fill="#555" text-anchor="end">'
        f"{edges[hi]:.3g}</text></svg>"
    )


def _context_html(c: dict[str, Any], peak: float) -> str:
    spans = []
    for i, (token, act) in enumerate(zip(c["tokens"], c["acts"], strict=True)):
        shade = min(max(act, 0.0) / peak, 1.0) if peak > 0 else 0.0
        text = _e(_shown(token))
        if i == c["at"]:
            spans.append(f'<mark title="activation {act:.3g}">{text}</mark>')
        else:
            style = f' style="background:rgba(230,126,34,{shade:.2f})"' if shade > 0 else ""
            spans.append(f'<span title="activation {act:.3g}"{style}>{text}</span>')
    return f'<div class="ctx">{"".join(spans)}<span class="act">{c["activation"]:.3g}</span></div>'


def _token_table(title: str, rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    cells = "".join(
        f'<tr><td class="tok">{_e(quoted(r["token"]))}</td><td>{r["logit"]:+.3f}</td></tr>'
        for r in rows
    )
    return f"<div><b>{_e(title)}</b><table>{cells}</table></div>"


def feature_section(f: dict[str, Any], edges: list[float]) -> str:
    """One feature: its numbers, histogram, the tokens it promotes and suppresses, contexts."""
    fired = sorted({c["tokens"][c["at"]] for c in f["contexts"]})
    stats = (
        f"density {f['density']:.3%} ({f['count']} tokens) · max {f['max']:.3g} · "
        f"mean when firing {f['mean']:.3g}"
    )
    parts = [
        f'<section class="feature" id="f{f["id"]}" data-id="{f["id"]}" '
        f'data-tokens="{_e(json.dumps(fired))}">',
        f"<h2>feature {f['id']}</h2>",
        f'<div class="stats">{stats}</div>',
        '<div class="cols">',
        _histogram_svg(f["histogram"], edges),
        _token_table("promotes", f["promotes"]),
        _token_table("suppresses", f["suppresses"]),
        "</div>",
        *(_context_html(c, f["max"]) for c in f["contexts"]),
        "</section>",
    ]
    return "".join(parts)


def page(report: dict[str, Any], title: str = "SAE features") -> str:
    """The whole report as one HTML document."""
    live = [f for f in report["features"] if f["count"]]
    dead = [f["id"] for f in report["features"] if not f["count"]]
    about = (
        f"{report['d_sae']} features ({report['architecture']}) reading {report['hook']} "
        f"(d_in {report['d_in']}); {report['tokens']:,} tokens in {report['rows']} rows of "
        f"{report['context']}."
    )
    source = " · ".join(f"{k}: {report[k]}" for k in ("sae_dir", "model", "data") if report.get(k))
    dead_line = ""
    if dead:
        ids = ", ".join(str(i) for i in dead)
        dead_line = f'<p class="hint">never fired ({len(dead)}): {_e(ids)}</p>'
    body = "".join(feature_section(f, report["histogram_edges"]) for f in live)
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>"
        f'<h1>{_e(title)}</h1><p>{_e(about)}</p><p class="hint">{_e(source)}</p>'
        f'<p class="hint">logits: {_e(report["logits"])}</p>'
        '<p><input id="search" placeholder="feature id (12 or #12) or a token" '
        'autocomplete="off"> <span id="found" class="hint"></span></p>'
        f"{dead_line}{body}<script>{SCRIPT}</script></body></html>"
    )
