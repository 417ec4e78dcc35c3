"""`mygpt2 inspect attention|lens|patch|tokens|dla`: look inside a model on a text.

Each view loads the model (a checkpoint, or GPT-2 weights with `--init_from`) on the CPU in
float32 unless `--device` says otherwise, encodes the text, runs one function of
`mygpt2.inspect`, prints a table, and writes a PNG, JSON or HTML file when asked.
`health` and `series` read a training run's directory instead (`commands/inspect_dynamics.py`);
`features` reads an SAE and a text source (`commands/inspect_features.py`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mygpt2.commands.args import Command, read_args
from mygpt2.errors import MyGPT2Error, UsageError

if TYPE_CHECKING:
    import torch

    from mygpt2.model import GPT
    from mygpt2.tokenizer import RegexTokenizer

VIEWS = ("attention", "lens", "patch", "tokens", "dla", "health", "series", "features")
COMMAND = Command(
    name="inspect",
    usage="""usage: mygpt2 inspect attention|lens|patch|tokens|dla (--text TEXT | --file PATH) [--FLAG VALUE ...]
       mygpt2 inspect health|series --out_dir DIR [--metric M] [--png PATH]
       mygpt2 inspect features --sae_dir DIR --data SRC --out DIR [--features 0,5,10-19]

Look inside a trained model (--out_dir or --checkpoint) or GPT-2 weights (--init_from gpt2|DIR):
  attention  each head's attention pattern; the keys each head reads most from --pos; --png grid
             (layers x heads), --json for attention viewers (bertviz, circuitsvis)
  lens       the logit lens: each layer's top --k tokens at --pos, and the rank of --target
  patch      activation patching of --text (clean) into --corrupt at --site, per layer and position
             (or head, for z); metric: logit(--target) - logit(--foil) at the last position, or
             the log-probability of --target without --foil; --png heatmap
  tokens     the loss of each token given the tokens before it; --html page shaded by loss
  dla        direct logit attribution: each head's, MLP's, embedding's and bias's share of the
             logit of --target (default: the predicted token) at --pos, or of
             logit(--target) - logit(--foil); --png heatmap
Tokens for --target and --foil are text that encodes to one token (' Paris'), or #ID.

How a run learned (--out_dir of a training run; no text needed):
  health     redraw health.png from metrics.jsonl (train with --health_interval N) and warn of
             update ratios far outside 1e-4..1e-2, gradients exploding or vanishing across
             layers, heads collapsed onto the first token, layers with most MLP units dead
  series     measure --metric on every snapshot in out_dir/checkpoints (train with
             --keep_checkpoints log) and plot it against tokens seen: val_loss, induction,
             prev_token, lens_loss, icl (comma-separated for several); --png names the picture

An SAE's features (the model it reads, and --data SRC: anything --data takes):
  features   each feature's top-activating contexts (activating token highlighted), activation
             histogram, density, and the tokens its direction promotes and suppresses through
             the unembedding; --out DIR gets index.html (one self-contained page) and
             features.json (mygpt2 serve --features DIR shows it in the Features tab)""",
    sections={
        "run": ("out_dir", "checkpoint", "init_from", "device"),
        "tokenizer": ("use_tiktoken", "tokenizer_path", "tiktoken_file"),
        "data": ("data", "data_dir", "split", "stdlib_max_mb", "strict_utf8", "cache_dir"),
    },
    extra={
        "text": "the text to look at (for patch: the clean text)",
        "file": "read the text from this UTF-8 file instead of --text",
        "pos": "the token position reported by attention, lens and dla (default -1: the last)",
        "k": "how many tokens or terms a table shows (default 5; dla: 10)",
        "target": "a token, as text (' Paris') or #ID: lens rank, patch metric, dla logit",
        "foil": "patch and dla: look at logit(target) - logit(foil)",
        "corrupt": "patch: the corrupted text, with as many tokens as --text",
        "site": "patch: resid_pre (default), resid_mid, resid_post, attn_out, mlp_out or z",
        "png": "write a picture to this file (attention, patch, dla)",
        "json": "attention: write the patterns to this file as JSON",
        "html": "tokens: write an HTML page shaded by loss to this file",
        "metric": "series: val_loss, induction (default), prev_token, lens_loss, icl; or a list a,b",
        "windows": "series: windows of validation text (T + 1 tokens each) per snapshot (default 8)",
        "sae_dir": "features: the SAE's directory (mygpt2 sae train or SAELens)",
        "features": "features: which ones, e.g. 0,5,10-19 (default: all)",
        "tokens": "features: validation tokens of --data to read (default 65_536)",
        "contexts": "features: top-activating contexts kept per feature (default 10)",
        "out": "features: the directory for index.html and features.json",
    },
)
ONLY_FOR = {"corrupt": "patch", "site": "patch", "foil": "patch or dla", "json": "attention"}
ONLY_FOR |= {"html": "tokens", "png": "attention, patch, dla, health or series"}
ONLY_FOR |= {"metric": "series", "windows": "series"}
ONLY_FOR |= {flag: "features" for flag in ("sae_dir", "features", "tokens", "contexts", "out")}
DATA_FLAGS = ("data", "data_dir", "split", "stdlib_max_mb", "strict_utf8", "cache_dir")


def cli(argv: list[str]) -> None:
    args = read_args(argv, COMMAND, positional=True)
    if args is None:
        return
    if len(args.positional) != 1 or args.positional[0] not in VIEWS:
        got = f" (got {' '.join(args.positional)!r})" if args.positional else ""
        raise UsageError(
            f"say what to look at: mygpt2 inspect {'|'.join(VIEWS)} --text TEXT{got}. "
            "Run 'mygpt2 inspect --help' for the views and flags."
        )
    view, extras = args.positional[0], args.extras
    for flag, views in ONLY_FOR.items():
        if flag in extras and view not in views:
            raise UsageError(f"--{flag} is for mygpt2 inspect {views}, not {view}.")
    data_flags = [f for f in DATA_FLAGS if args.config.given.get(f) == "flag"]
    if view == "features":
        from mygpt2.commands.inspect_features import show_features

        show_features(args.config, extras)
        return
    if data_flags:
        raise UsageError(f"--{data_flags[0]} is for mygpt2 inspect features, not {view}.")
    if view in ("health", "series"):  # a run's history, not a text
        from mygpt2.commands.inspect_dynamics import show_health, show_series

        (show_health if view == "health" else show_series)(args.config, extras)
        return
    if view == "patch" and not {"corrupt", "target"} <= set(extras):
        raise UsageError("mygpt2 inspect patch needs --corrupt TEXT and --target TOKEN.")
    text = read_text(extras)
    pos, k = _int(extras, "pos", -1), _int(extras, "k", 10 if view == "dla" else 5)
    import torch

    from mygpt2.checkpoint import load_model_and_tokenizer
    from mygpt2.runtime import pick_device

    model, tok = load_model_and_tokenizer(args.config)
    model = model.to(pick_device(args.config.run.device)).eval()
    ids = encode(model, tok, text, "--text" if "text" in extras else "--file")
    if not -len(ids) <= pos < len(ids):
        raise UsageError(f"--pos {pos} is outside the text's {len(ids)} tokens.")
    labels = [tok.decode([i]) for i in ids]
    with torch.no_grad():
        if view == "attention":
            show_attention(model, ids, labels, pos, extras)
        elif view == "lens":
            show_lens(model, tok, ids, labels, pos, k, extras)
        elif view == "patch":
            show_patch(model, tok, ids, labels, extras)
        elif view == "tokens":
            show_tokens(model, ids, labels, extras)
        else:
            show_dla(model, tok, ids, labels, pos, k, extras)


def read_text(extras: dict[str, str]) -> str:
    """The text of --text or --file (exactly one of them)."""
    if ("text" in extras) == ("file" in extras):
        raise UsageError("give the text with --text TEXT or --file PATH (one of them).")
    if "text" in extras:
        text = extras["text"]
    else:
        path = Path(extras["file"])
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise MyGPT2Error(f"--file '{path}' does not exist.") from None
        except UnicodeDecodeError:
            raise MyGPT2Error(f"--file '{path}' is not UTF-8 text.") from None
        except OSError as e:
            raise MyGPT2Error(f"cannot read --file '{path}': {e.strerror}.") from None
    if not text:
        raise UsageError("the text is empty: give at least one character.")
    return text


def _int(extras: dict[str, str], name: str, default: int) -> int:
    try:
        return int(extras.get(name, default))
    except ValueError:
        raise UsageError(f"--{name} takes a whole number, got {extras[name]!r}.") from None


def encode(model: GPT, tok: RegexTokenizer, text: str, where: str) -> list[int]:
    """The token ids of `text`, refused when the model cannot see them all at once."""
    ids = tok.encode_ordinary(text)
    if len(ids) > model.config.T:
        raise MyGPT2Error(
            f"{where} is {len(ids)} tokens, more than the model's context length "
            f"T={model.config.T}; shorten it."
        )
    return ids


def token_id(tok: RegexTokenizer, model: GPT, value: str, flag: str) -> int:
    """`#ID`, or text that encodes to exactly one token."""
    if value.startswith("#") and value[1:].isdigit():
        i = int(value[1:])
    else:
        ids = tok.encode_ordinary(value)
        if len(ids) != 1:
            raise UsageError(
                f"--{flag} {value!r} is {len(ids)} tokens {ids}; give text that is one token "
                "(mind a leading space: ' Paris'), or an id as #ID."
            )
        i = ids[0]
    if not 0 <= i < model.config.vocab_size:
        raise UsageError(f"--{flag} {value}: token id {i} is outside the vocabulary.")
    return i


def _shown(token: str) -> str:
    return repr(token)


def _token(tok: RegexTokenizer, i: int) -> str:
    """Token `i` as a label, or #i for an id the tokenizer does not have (a padded vocabulary)."""
    return repr(tok.decode([i])) if i < tok.vocab_size else f"#{i}"


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 2] + "…" + text[-1]


def _prob(p: float) -> str:
    return f"{p:.2f}" if p >= 0.01 else f"{p:.0e}"


def _wrote(path: str) -> None:
    print(f"wrote {path}")


# ------------------------------------------------------------------------------------ views
def show_attention(
    model: GPT, ids: list[int], labels: list[str], pos: int, extras: dict[str, str]
) -> None:
    from mygpt2.fileio import atomic_write
    from mygpt2.inspect import attention, attention_json, save_attention_png

    patterns = attention(model, ids)[:, 0]  # (L, H, T, T)
    q = pos % len(ids)
    print(f"attention from position {q} ({_shown(labels[q])}): the 3 keys each head reads most")
    for layer in range(patterns.shape[0]):
        for head in range(patterns.shape[1]):
            row = patterns[layer, head, q]
            top = row.topk(min(3, q + 1))
            keys = "  ".join(
                f"{_shown(labels[j])}@{j} {w:.2f}"
                for w, j in zip(top.values.tolist(), top.indices.tolist(), strict=True)
            )
            print(f"  L{layer} H{head}:  {keys}")
    if "png" in extras:
        save_attention_png(patterns, labels, extras["png"], title="attention patterns")
        _wrote(extras["png"])
    if "json" in extras:
        doc = json.dumps(attention_json(patterns, labels))
        atomic_write(extras["json"], lambda fh: fh.write(doc.encode("utf-8")))
        _wrote(extras["json"])


def show_lens(
    model: GPT,
    tok: RegexTokenizer,
    ids: list[int],
    labels: list[str],
    pos: int,
    k: int,
    extras: dict[str, str],
) -> None:
    from mygpt2.inspect import lens_top_k, logit_lens

    target = token_id(tok, model, extras["target"], "target") if "target" in extras else None
    top = lens_top_k(logit_lens(model, ids), k=k, pos=pos, target=target)
    q = pos % len(ids)
    print(f"logit lens after position {q} ({_shown(labels[q])}): top {k} next tokens per layer")
    head = f"{'layer':>5}  {'top tokens (probability)':<{18 * k}}"
    if target is not None:
        head += f"  rank of {_token(tok, target)} (p)"
    print(head)
    for layer in range(top.ids.shape[0]):
        cells = "".join(
            f"{_short(_token(tok, i), 11):>11} {_prob(p):<5} "
            for i, p in zip(top.ids[layer].tolist(), top.probs[layer].tolist(), strict=True)
        )
        line = f"{layer:>5}  {cells:<{18 * k}}"
        if top.target_rank is not None and top.target_prob is not None:
            rank, p = int(top.target_rank[layer]), float(top.target_prob[layer])
            line += f"  {rank:>6} ({_prob(p)})"
        print(line)


def patch_metric(target: int, foil: int | None) -> Any:
    """logit(target) - logit(foil) at the last position, or log p(target), batch mean."""

    def metric(logits: torch.Tensor) -> torch.Tensor:
        last = logits[:, -1].float()
        if foil is None:
            return last.log_softmax(dim=-1)[:, target].mean()
        return (last[:, target] - last[:, foil]).mean()

    return metric


def show_patch(
    model: GPT, tok: RegexTokenizer, ids: list[int], labels: list[str], extras: dict[str, str]
) -> None:
    from mygpt2.inspect import patch, save_heatmap_png
    from mygpt2.inspect.analyses import _site

    corrupt = encode(model, tok, extras["corrupt"], "--corrupt")
    if len(corrupt) != len(ids):
        raise MyGPT2Error(
            f"--text is {len(ids)} tokens and --corrupt {len(corrupt)}: patching goes position "
            "by position, so they need the same number of tokens."
        )
    target = token_id(tok, model, extras["target"], "target")
    foil = token_id(tok, model, extras["foil"], "foil") if "foil" in extras else None
    site = _site(extras.get("site", "resid_pre"))
    metric = patch_metric(target, foil)
    clean_value = float(metric(model.run_with_hooks(ids)))
    corrupt_value = float(metric(model.run_with_hooks(corrupt)))
    grid = patch(model, ids, corrupt, site, metric)  # (L, T) or (L, H)
    what = f"logit({_token(tok, target)})"
    what += f" - logit({_token(tok, foil)})" if foil is not None else " as log-probability"
    print(f"activation patching at blocks.*.{site}; metric: {what} at the last position")
    print(f"clean {clean_value:.3f}, corrupt {corrupt_value:.3f}; each cell: corrupt run with")
    L = grid.shape[0]
    layers = "".join(f"{f'L{i}':>8}" for i in range(L))
    if site == "attn.hook_z":
        print("one head's clean output (all positions) put back")
        print(f"{'head':>6}{layers}")
        for h in range(grid.shape[1]):
            print(f"{h:>6}" + "".join(f"{grid[i, h]:8.3f}" for i in range(L)))
        cols = [f"H{h}" for h in range(grid.shape[1])]
    else:
        print("one position's clean activation put back")
        print(f"{'pos':>4}  {'clean':<12}{'corrupt':<12}{layers}")
        for j in range(grid.shape[1]):
            pair = f"{_short(_shown(labels[j]), 11):<12}{_short(_token(tok, corrupt[j]), 11):<12}"
            print(f"{j:>4}  {pair}" + "".join(f"{grid[i, j]:8.3f}" for i in range(L)))
        cols = [f"{j} {lab}" for j, lab in enumerate(labels)]
    if "png" in extras:
        save_heatmap_png(
            grid,
            extras["png"],
            [f"L{i}" for i in range(L)],
            cols,
            title=f"patching {site}: {what}",
            colorbar=f"metric (clean {clean_value:.2f}, corrupt {corrupt_value:.2f})",
            center=corrupt_value,
        )
        _wrote(extras["png"])


def show_tokens(model: GPT, ids: list[int], labels: list[str], extras: dict[str, str]) -> None:
    from mygpt2.fileio import atomic_write
    from mygpt2.inspect import loss_html, loss_table, token_losses

    losses = token_losses(model, ids)[0].tolist()
    print(loss_table(labels, losses))
    if "html" in extras:
        page = loss_html(labels, losses, title="per-token loss")
        atomic_write(extras["html"], lambda fh: fh.write(page.encode("utf-8")))
        _wrote(extras["html"])


def show_dla(
    model: GPT,
    tok: RegexTokenizer,
    ids: list[int],
    labels: list[str],
    pos: int,
    k: int,
    extras: dict[str, str],
) -> None:
    import torch

    from mygpt2.inspect import direct_logit_attribution, save_heatmap_png

    if "target" in extras:
        target = token_id(tok, model, extras["target"], "target")
    else:
        logits = model.run_with_hooks(ids)[0, pos]
        target = int(logits.argmax())
    dla = direct_logit_attribution(model, ids, target, pos=pos)
    name = f"logit({_token(tok, target)})"
    if "foil" in extras:  # a difference of logits splits into the differences of the terms
        foil = token_id(tok, model, extras["foil"], "foil")
        other = direct_logit_attribution(model, ids, foil, pos=pos)
        dla.values, dla.logit = dla.values - other.values, dla.logit - other.logit
        name += f" - logit({_token(tok, foil)})"
    values = dla.values[:, 0]
    q = pos % len(ids)
    print(f"direct logit attribution of {name} after position {q} ({_shown(labels[q])})")
    print(
        f"{name} = {float(dla.logit[0]):.3f}; its {len(values)} terms sum to {float(values.sum()):.3f}"
    )
    order = values.abs().argsort(descending=True)[:k].tolist()
    print(f"the {len(order)} largest:")
    for i in order:
        print(f"  {dla.labels[i]:<16} {float(values[i]):+8.3f}")
    if "png" in extras:
        grid = torch.cat([dla.heads()[..., 0], dla.mlps()[:, 0, None]], dim=1)  # (L, H + 1)
        cols = [f"H{h}" for h in range(dla.n_heads)] + ["MLP"]
        rows = [f"L{i}" for i in range(dla.n_layers)]
        title = f"direct logit attribution of {name}"
        save_heatmap_png(grid, extras["png"], rows, cols, title=title, colorbar="logit")
        _wrote(extras["png"])
    if not math.isclose(float(values.sum()), float(dla.logit[0]), rel_tol=1e-3, abs_tol=1e-3):
        raise MyGPT2Error("the terms do not sum to the logit: a bug in mygpt2, please report it.")
