"""Browse an SAE's features: where each fires in a text, how often, how strongly, and which
tokens its direction pushes the logits towards.

    report = browse(model, sae, tokens, labels, features=[0, 5])   # plain data (JSON-ready)
    hits = search(report, " the")                                   # feature ids, best first

For each feature, over `tokens` (a token stream cut into rows of the model's context):
- `contexts`: the rows' positions where it fired most, each as a window of tokens around that
  position (`before` tokens before it, `after` after it, never past its row: the model saw
  only its row), with the feature's activation on every token of the window; `at` is the
  activating token's place in the window.
- `density`: the fraction of tokens where it fires (activation > 0); `count` those tokens.
- `histogram`: how many tokens it fired on per activation bin. Bins are log-spaced and fixed
  (`HIST_EDGES`, 10^-4 to 10^4, eight per decade, outer bins open): a feature's range is not
  known before the pass, and one pass counts into fixed bins; the log scale shows weak and
  strong firing side by side, as the field's activation-density plots do.
- `promotes` / `suppresses`: the tokens whose logits its decoder direction raises and lowers
  most through the unembedding, `W_dec[f] @ W_U` with `W_U` the model's own head weight
  (`model.lm_head.weight`): the direct path from the hook to the logits. The final norm is
  left out, as the field does (its scale depends on the whole residual stream, not on the
  feature; its gain is not applied either: nothing but what the head does), and so is the
  softcap (monotone per token: the order is the same). Hooks that write into the residual
  stream (`hook_resid_*`, `hook_attn_out`, `hook_mlp_out`, `hook_embed`, `hook_pos_embed`) use
  the direction as it is; `attn.hook_z` and `mlp.hook_post` pass it through their block's
  output projection first (`c_proj`, no bias: a direction, not a point). Other hooks read a
  space the head cannot (queries, keys, normalized inputs): no token lists, with a note.

Activations come from the model's own forward, stopped at the hook (`mygpt2.sae.stream`);
nothing of the forward is rewritten. The windows' activations are computed again for the rows
that hold a top context (the same forward, so the same numbers), instead of keeping every
activation of the pass.
"""

from __future__ import annotations

import codecs
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mygpt2.errors import MyGPT2Error
from mygpt2.sae.model import check_feature
from mygpt2.sae.splice import check_fits
from mygpt2.sae.stream import activations

HIST_EDGES = [10 ** (e / 8) for e in range(-32, 33)]  # 64 bins between 1e-4 and 1e4
RESIDUAL = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out")
RESIDUAL += ("hook_mlp_out", "hook_embed", "hook_pos_embed")
BATCH_NUMBERS = 2**24  # feature activations (tokens x d_sae) of one batch: 64 MB in float32


def rows_of(tokens: Sequence[int] | np.ndarray, context: int) -> torch.Tensor:
    """The token stream as rows of `context` tokens (B, context); the tail that fills no row is
    dropped, unless the stream is shorter than one row (then it is the one row)."""
    ids = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
    if ids.numel() == 0:
        raise MyGPT2Error("no tokens to read: the data is empty.")
    if ids.numel() < context:
        return ids[None]
    n = ids.numel() // context
    return ids[: n * context].view(n, context)


def check_features(features: Sequence[int] | None, d_sae: int) -> list[int]:
    """The feature ids to browse (all when None), each checked against the SAE's size."""
    if features is None:
        return list(range(d_sae))
    chosen = list(dict.fromkeys(features))  # in the order given, once each
    if not chosen:
        raise MyGPT2Error("no features chosen: give ids such as 0,5,12.")
    return [check_feature(f, d_sae) for f in chosen]


def unembed_directions(model: Any, sae: Any, features: list[int]) -> tuple[torch.Tensor, str]:
    """(len(features), vocab_size) logit change per unit of each feature through the direct
    path, and a note saying which path; an empty tensor where the head cannot read the hook."""
    name = sae.cfg.hook_name
    d = sae.W_dec.detach()[features].float()  # (F, d_in)
    W_U = model.lm_head.weight.detach()[: model.config.vocab_size].float()  # (vocab, n_emb)
    suffix = name.split(".", 2)[-1] if name.startswith("blocks.") else name
    if suffix in RESIDUAL:
        note = "W_dec[f] @ W_U (the model's lm_head weight): the direct path to the logits"
    elif suffix in ("attn.hook_z", "mlp.hook_post"):
        layer = int(name.split(".")[1])
        block = model.transformer.h[layer]
        proj = (block.attn if suffix == "attn.hook_z" else block.mlp).c_proj.weight.detach()
        d = d @ proj.float()  # (F, n_emb): Linear keeps its weight (in, out)
        note = (
            f"W_dec[f] @ W_O @ W_U: through blocks.{layer}.{suffix.split('.')[0]}.c_proj, "
            "then the model's lm_head weight: the direct path to the logits"
        )
    else:
        note = f"{name} is not in the residual stream's basis: no direct path to the logits"
        return torch.empty(len(features), 0), note
    return d.to(W_U.device) @ W_U.T, note


class _Pass:
    """What one pass over the rows keeps for each chosen feature: counts, sums, maxima, the
    histogram and the top activations with their token positions."""

    def __init__(self, n_features: int, top: int):
        self.count = torch.zeros(n_features, dtype=torch.long)
        self.total = torch.zeros(n_features, dtype=torch.float64)
        self.hist = torch.zeros(n_features, len(HIST_EDGES) - 1, dtype=torch.long)
        self.top_values = torch.full((top, n_features), -math.inf)
        self.top_index = torch.zeros(top, n_features, dtype=torch.long)
        self.tokens = 0

    def add(self, f: torch.Tensor) -> None:
        """f: (rows, n_features) activations of the next `rows` tokens of the stream."""
        f = f.float().cpu()
        fired = f > 0
        self.count += fired.sum(0)
        self.total += f.clamp(min=0).sum(0, dtype=torch.float64)
        rows, cols = fired.nonzero(as_tuple=True)
        if rows.numel():
            bins = len(HIST_EDGES) - 1
            log = f[rows, cols].log10()
            b = ((log + 4) * 8).floor().long().clamp(0, bins - 1)
            self.hist.view(-1).index_add_(0, cols * bins + b, torch.ones_like(b))
        k = min(self.top_values.shape[0], f.shape[0])
        values, index = f.topk(k, dim=0)  # (k, n_features)
        values = torch.cat([self.top_values, values])
        index = torch.cat([self.top_index, index + self.tokens])
        best = values.topk(self.top_values.shape[0], dim=0)
        self.top_values = best.values
        self.top_index = index.gather(0, best.indices)
        self.tokens += f.shape[0]


def _window_texts(ids: list[int], tok: Any, vocab: int) -> list[str]:
    """Each token's text as read in sequence: a character split over tokens shows on the token
    that completes it; ids past the tokenizer's vocabulary show as #id."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    out = []
    for i in ids:
        out.append(decoder.decode(tok.decode_bytes([i])) if i < vocab else f"#{i}")
    return out


def _token_text(tok: Any, i: int, vocab: int) -> str:
    """One token alone: its text, its bytes as \\xNN where they are no whole UTF-8 (a piece of
    a character), or #id past the tokenizer's vocabulary."""
    if i >= vocab:
        return f"#{i}"
    raw = tok.decode_bytes([i])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "".join(f"\\x{b:02x}" for b in raw)


def quoted(token: str) -> str:
    """A token for people, in quotes: characters that print as themselves stay (backslashes
    too, so a lone byte reads \\xNN once), the others as Python escapes ('\\n', '\\x13')."""
    shown = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in token)
    return f"'{shown}'"


@torch.no_grad()
def browse(
    model: Any,
    sae: Any,
    tokens: Sequence[int] | np.ndarray,
    tok: Any,
    features: Sequence[int] | None = None,
    top: int = 10,
    before: int = 12,
    after: int = 4,
    n_logits: int = 10,
    batch_rows: int | None = None,
    context: int | None = None,
    progress: Any = None,
) -> dict[str, Any]:
    """The browse report of `features` (default: all) of `sae` over `tokens`, as plain data.

    `tok` decodes tokens for the report; `context`: tokens per row (default the model's T);
    `batch_rows`: rows per forward (default: as many as keep the batch's feature activations,
    tokens x d_sae, within 2^24 numbers, at most 8); `progress(done_rows, total_rows)` is
    called after each batch when given."""
    check_fits(model, sae)
    chosen = check_features(features, sae.cfg.d_sae)
    for name, value in (("top", top), ("before", before), ("after", after), ("n_logits", n_logits)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise MyGPT2Error(f"{name} must be a whole number >= 0, got {value!r}.")
    model.eval()
    device = model.transformer.wte.weight.device
    context = model.config.T if context is None else context
    if (
        isinstance(context, bool)
        or not isinstance(context, int)
        or not 1 <= context <= model.config.T
    ):
        raise MyGPT2Error(
            f"context must be from 1 to the model's T={model.config.T} tokens, got {context!r}."
        )
    rows = rows_of(tokens, context)
    n_rows, context = rows.shape
    if batch_rows is None:
        batch_rows = max(1, min(8, BATCH_NUMBERS // (context * sae.cfg.d_sae)))
    hook = sae.cfg.hook_name
    select = torch.tensor(chosen, device=sae.W_dec.device)

    def feature_acts(batch: torch.Tensor) -> torch.Tensor:  # (rows * context, F)
        acts = activations(model, hook, batch.to(device))
        return sae.encode(acts.to(sae.W_dec.device))[:, select]

    seen = _Pass(len(chosen), max(top, 1))
    for start in range(0, n_rows, batch_rows):
        seen.add(feature_acts(rows[start : start + batch_rows]))
        if progress is not None:
            progress(min(start + batch_rows, n_rows), n_rows)

    # the windows: rows holding a top context, run again
    vocab = min(model.config.vocab_size, getattr(tok, "vocab_size", model.config.vocab_size))
    wanted: dict[int, list[tuple[int, int, float]]] = {}  # row -> (feature slot, pos, value)
    for slot in range(len(chosen)):
        for rank in range(top):
            value = float(seen.top_values[rank, slot])
            if value > 0:
                row, pos = divmod(int(seen.top_index[rank, slot]), context)
                wanted.setdefault(row, []).append((slot, pos, value))
    contexts: list[list[dict[str, Any]]] = [[] for _ in chosen]
    needed = sorted(wanted)
    for start in range(0, len(needed), batch_rows):
        batch = needed[start : start + batch_rows]
        acts = feature_acts(rows[batch]).float().cpu().view(len(batch), context, len(chosen))
        for j, row in enumerate(batch):
            for slot, pos, value in wanted[row]:
                lo, hi = max(0, pos - before), min(context, pos + after + 1)
                ids = rows[row, lo:hi].tolist()
                contexts[slot].append(
                    {
                        "tokens": _window_texts(ids, tok, vocab),
                        "ids": ids,
                        "acts": [round(v, 4) for v in acts[j, lo:hi, slot].tolist()],
                        "at": pos - lo,
                        "activation": value,
                        "row": row,
                        "pos": pos,
                    }
                )
    for c in contexts:
        c.sort(key=lambda x: -x["activation"])

    logits, note = unembed_directions(model, sae, chosen)
    n_tokens = n_rows * context
    out = []
    for slot, f in enumerate(chosen):
        count = int(seen.count[slot])
        entry: dict[str, Any] = {
            "id": f,
            "count": count,
            "density": count / n_tokens,
            "max": float(seen.top_values[0, slot]) if count else 0.0,
            "mean": float(seen.total[slot]) / count if count else 0.0,
            "histogram": seen.hist[slot].tolist(),
            "contexts": contexts[slot],
            "promotes": [],
            "suppresses": [],
        }
        if logits.shape[1]:
            k = min(n_logits, logits.shape[1])
            for key, largest in (("promotes", True), ("suppresses", False)):
                best = logits[slot].topk(k, largest=largest)
                entry[key] = [
                    {"id": i, "token": _token_text(tok, i, vocab), "logit": round(v, 4)}
                    for v, i in zip(best.values.tolist(), best.indices.tolist(), strict=True)
                ]
        out.append(entry)
    return {
        "hook": hook,
        "d_in": sae.cfg.d_in,
        "d_sae": sae.cfg.d_sae,
        "architecture": sae.cfg.architecture,
        "tokens": n_tokens,
        "rows": n_rows,
        "context": context,
        "histogram_edges": HIST_EDGES,
        "logits": note,
        "features": out,
    }


def search(report: dict[str, Any], query: str, limit: int = 20) -> list[int]:
    """Feature ids matching `query`, best first: an id (`12` or `#12`) gives that feature;
    text gives the features whose top contexts fire on that token (ranked by their largest
    activation there), then those that promote it most. Tokens match as written, then
    ignoring case and surrounding spaces."""
    by_id = {f["id"]: f for f in report["features"]}
    q = query.strip()
    if q.lstrip("#").isdigit() and (q.startswith("#") or q == query):
        f = int(q.lstrip("#"))
        return [f] if f in by_id else []
    if not query:
        return []

    def same(token: str, exact: bool) -> bool:
        return token == query if exact else token.strip().lower() == q.lower()

    for exact in (True, False):
        fired: dict[int, float] = {}
        promoted: dict[int, float] = {}
        for f in report["features"]:
            for c in f["contexts"]:
                if same(c["tokens"][c["at"]], exact):
                    fired[f["id"]] = max(fired.get(f["id"], 0.0), c["activation"])
            for p in f["promotes"]:
                if same(p["token"], exact):
                    promoted[f["id"]] = max(promoted.get(f["id"], -math.inf), p["logit"])
        ranked = sorted(fired, key=lambda i: -fired[i])
        ranked += [i for i in sorted(promoted, key=lambda i: -promoted[i]) if i not in fired]
        if ranked:
            return ranked[:limit]
    return []
