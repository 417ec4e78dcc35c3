"""`mygpt2 eval`: language-modelling metrics and multiple-choice accuracy of one or more models.

Models are named by MODEL arguments (a checkpoint file, an out_dir holding checkpoint.pt, a
Hugging Face GPT-2 directory, or a hub name such as gpt2) and by the flags the other commands
use (--checkpoint, --out_dir, --init_from); the table lists them in the order the command line
names them. Each model is loaded, scored on the text (`mygpt2.evaluation`) and the tasks
(`mygpt2.evaluation.tasks`), and let go before the next one is loaded.
"""

from __future__ import annotations

import copy
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mygpt2.commands.args import Command, read_args
from mygpt2.errors import MyGPT2Error, UsageError

if TYPE_CHECKING:
    from mygpt2.config import Config

COMMAND = Command(
    name="eval",
    usage="""usage: mygpt2 eval [MODEL ...] [--data TEXT] [--tasks FILE.jsonl[,FILE.jsonl]] [--FLAG VALUE ...]

Score models side by side: loss, perplexity, bits per byte and tokens per byte on a text
(--data: a file, a directory, a glob, stdlib, shakespeare or hf:NAME[:CONFIG]), and accuracy on
multiple-choice JSONL files (--tasks: HellaSwag's format, or {"context", "choices", "answer"}).

MODEL is a checkpoint file, an out_dir holding checkpoint.pt, a Hugging Face GPT-2 directory,
or a hub name (gpt2, gpt2-medium, ...); --checkpoint, --out_dir and --init_from name one model
each as well. Without any, out_dir's checkpoint is scored. Checkpoints use the tokenizer they
were trained with, GPT-2 weights GPT-2's (offline: --tiktoken_file). Example:

  mygpt2 eval --checkpoint a.pt b.pt --init_from gpt2 --data shakespeare --stride 512 \\
      --tasks hellaswag_val.jsonl --json results.json

Windows of T tokens move by --stride S and score their last S tokens: each token once, seen
with at least T - S + 1 tokens (S = T: disjoint blocks, like training's validation loss).
Documents are joined with <|endoftext|> as training joins them, and windows cross them; the
end-of-text tokens are context, never scored. Models with different tokenizers compare by
bits per byte. docs/EVAL.md has the definitions and HellaSwag's reference figures.""",
    sections={
        "run": ("out_dir", "checkpoint", "init_from", "device", "dtype"),
        "data": ("data", "stdlib_max_mb", "strict_utf8", "cache_dir", "shakespeare_path"),
        "tokenizer": ("use_tiktoken", "tokenizer_path", "tiktoken_file"),
    },
    extra={
        "stride": "tokens scored per window (default: T, disjoint blocks)",
        "context": "score with this context length T, cropping each model's",
        "batch_size": "windows of T tokens per forward pass (default 8)",
        "max_tokens": "score only the first N tokens of --data (default: all)",
        "tasks": "multiple-choice JSONL files, comma-separated",
        "max_items": "score only the first N items of each task (default: all)",
        "predictions": "write each task item's scores and predictions to this JSONL",
        "json": "write the results to this JSON file (- : stdout, the table to stderr)",
    },
)
MODEL_FLAGS = ("checkpoint", "out_dir", "init_from")


def cli(argv: list[str]) -> None:
    args = read_args(argv, COMMAND, positional=True)
    if args is None:
        return
    cfg, extras = args.config, args.extras
    opts = {
        "stride": _int(extras, "stride", 0),
        "context": _int(extras, "context", 0),
        "batch_size": _int(extras, "batch_size", 8),
        "max_tokens": _int(extras, "max_tokens", 0),
        "max_items": _int(extras, "max_items", 0),
    }
    task_paths = [p.strip() for p in extras.get("tasks", "").split(",") if p.strip()]
    if "tasks" in extras and not task_paths:
        raise UsageError("--tasks needs at least one JSONL file.")
    has_data = "data" in cfg.given
    if not has_data and not task_paths:
        raise UsageError(
            "nothing to evaluate: give a text with --data (a file, a directory, a glob, stdlib, "
            "shakespeare or hf:NAME) and/or multiple-choice files with --tasks FILE.jsonl."
        )
    if "predictions" in extras and not task_paths:
        raise UsageError("--predictions writes task items: give --tasks FILE.jsonl too.")
    if opts["context"] and opts["stride"] > opts["context"]:
        raise UsageError(f"--stride {opts['stride']} is longer than --context {opts['context']}.")
    models = model_configs(cfg, argv, args.positional)

    from mygpt2.corpus import open_corpus
    from mygpt2.evaluation.tasks import read_task

    tasks = [read_task(p, opts["max_items"]) for p in task_paths]  # bad files fail before work
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise UsageError(f"two task files share the name '{_first_duplicate(names)}'; rename one.")
    corpus = open_corpus(cfg.data) if has_data else None
    if corpus is not None and corpus.total_bytes == 0:
        raise MyGPT2Error(f"{corpus.description} holds no text to score (it is empty).")
    rows, predictions, streams = [], [], {}
    for name, model_cfg in models:
        row, preds = evaluate_model(name, model_cfg, corpus, tasks, opts, streams)
        rows.append(row)
        predictions += preds
    notes = result_notes(rows)
    report = {
        "data": None if corpus is None else {"data": cfg.data.data, "source": corpus.description},
        "tasks": {t.name: {"path": str(t.path), "items": len(t.items)} for t in tasks},
        "models": rows,
        "notes": notes,
    }
    out = sys.stderr if extras.get("json") == "-" else sys.stdout
    print(table(rows, names), file=out)
    for note in notes:
        print(f"note: {note}", file=out)
    write_outputs(report, predictions, extras)


def _int(extras: dict[str, str], name: str, default: int) -> int:
    if name not in extras:
        return default
    try:
        value = int(extras[name].replace("_", ""))
    except ValueError:
        raise UsageError(f"--{name} must be an integer, got {extras[name]!r}.") from None
    if value < 1:
        raise UsageError(f"--{name} must be at least 1, got {value}.")
    return value


def _first_duplicate(values: list[str]) -> str:
    return next(v for i, v in enumerate(values) if v in values[:i])


# ----------------------------------------------------------------------------- which models


def classify(value: str) -> tuple[str, str]:
    """("checkpoint", path) or ("init_from", dir or hub name) for a MODEL argument."""
    from mygpt2.hf import HUB_NAMES

    path = Path(value).expanduser()
    if path.is_file():
        return "checkpoint", value
    if path.is_dir():
        if (path / "config.json").is_file():
            return "init_from", value
        if (path / "checkpoint.pt").is_file():
            return "checkpoint", str(path / "checkpoint.pt")
        raise UsageError(
            f"MODEL '{value}' is a directory with neither checkpoint.pt (a mygpt2 out_dir) nor "
            "config.json (a Hugging Face GPT-2 directory)."
        )
    if value in HUB_NAMES:
        return "init_from", value
    raise UsageError(
        f"MODEL '{value}' is not a checkpoint file, an out_dir, a Hugging Face GPT-2 directory, "
        f"nor a hub name ({', '.join(HUB_NAMES)})."
    )


def _argv_position(argv: list[str], flag: str | None, value: str) -> int:
    """Where the command line names a model (flags from a TOML file come first: -1)."""
    for i, arg in enumerate(argv):
        if flag is None:
            before = argv[i - 1].lstrip("-").replace("-", "_") if i else ""
            if arg == value and before not in MODEL_FLAGS:
                return i
        elif arg.replace("-", "_") in (f"__{flag}", f"__{flag}={value}".replace("-", "_")):
            return i
    return -1


def model_configs(cfg: Config, argv: list[str], positional: list[str]) -> list[tuple[str, Config]]:
    """(name shown, the config that loads it) for every model named, in command-line order."""
    named: list[tuple[int, str, str, str]] = []  # (position, name, field, value)
    for flag in MODEL_FLAGS:
        value = getattr(cfg.run, flag)
        if flag not in cfg.given or (flag == "init_from" and value == "scratch"):
            continue
        field = "init_from" if flag == "init_from" else "checkpoint"
        resolved = str(Path(value) / "checkpoint.pt") if flag == "out_dir" else value
        named.append((_argv_position(argv, flag, value), value, field, resolved))
    for value in positional:
        field, resolved = classify(value)
        named.append((_argv_position(argv, None, value), value, field, resolved))
    if not named:  # as sample: out_dir's checkpoint
        path = str(Path(cfg.run.out_dir) / "checkpoint.pt")
        named.append((0, path, "checkpoint", path))
    named.sort(key=lambda n: n[0])
    seen: set[tuple[str, str]] = set()
    out = []
    for _, name, field, value in named:
        key = (field, str(Path(value).expanduser().resolve()) if field == "checkpoint" else value)
        if key in seen:
            raise UsageError(f"the model '{name}' is named twice.")
        seen.add(key)
        model_cfg = copy.deepcopy(cfg)
        model_cfg.run.init_from = value if field == "init_from" else "scratch"
        model_cfg.run.checkpoint = value if field == "checkpoint" else ""
        out.append((name, model_cfg))
    return out


# ----------------------------------------------------------------------------- scoring


def evaluate_model(
    name: str,
    cfg: Config,
    corpus: Any,
    tasks: list[Any],
    opts: dict[str, int],
    streams: dict[str, Any],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Load one model, score it on the text and the tasks: its JSON row and its predictions.
    `streams` keeps the text's tokens for the next model with the same tokenizer."""
    from mygpt2.checkpoint import load_model_and_tokenizer
    from mygpt2.evaluation.tasks import score_task
    from mygpt2.evaluation.text import check_stride, read_stream, score_stream
    from mygpt2.runtime import pick_device, pick_dtype

    device = pick_device(cfg.run.device)
    dtype = pick_dtype(cfg.run.dtype, device)
    model, tok = load_model_and_tokenizer(cfg)
    if tok.vocab_size > model.config.vocab_size:
        raise MyGPT2Error(
            f"{name}: the tokenizer {tok.name} has {tok.vocab_size} ids, more than the model's "
            f"vocabulary of {model.config.vocab_size}: they do not belong together."
        )
    if opts["context"]:
        if opts["context"] > model.config.T:
            raise MyGPT2Error(
                f"--context {opts['context']} is longer than {name}'s context length "
                f"{model.config.T}."
            )
        model.crop_context(opts["context"])
    T = model.config.T
    stride = opts["stride"] or T
    if corpus is not None:
        try:
            check_stride(stride, T)
        except MyGPT2Error as e:
            raise UsageError(f"{name}: {e}") from None
    model = model.to(device).eval()
    progress = sys.stderr.isatty()
    dtype_name = str(dtype).removeprefix("torch.")
    print(
        f"mygpt2 eval: {name}: {model.num_params() / 1e6:.2f}M parameters, T={T}, tokenizer "
        f"{tok.name}, {device}, {dtype_name}",
        file=sys.stderr,
        flush=True,
    )
    row: dict[str, Any] = {
        "name": name,
        "source": cfg.run.init_from if cfg.run.init_from != "scratch" else cfg.run.checkpoint,
        "params": model.num_params(),
        "T": T,
        "tokenizer": {"name": tok.name, "fingerprint": tok.fingerprint(), "vocab": tok.vocab_size},
        "device": str(device),
        "dtype": dtype_name,
    }
    if corpus is not None:
        key = tok.fingerprint()
        if key not in streams:
            streams.clear()  # one tokenizer's tokens at a time: a large text is large
            streams[key] = read_stream(corpus, tok, opts["max_tokens"])
        stream = streams[key]
        score = score_stream(
            model,
            stream,
            stride=stride,
            batch_size=opts["batch_size"],
            dtype=dtype,
            progress=progress,
        )
        row.update(score.as_dict())
        row["documents"], row["text_truncated"] = stream.documents, stream.truncated
        rate = score.tokens / score.seconds if score.seconds > 0 else math.nan
        print(
            f"  text: {score.tokens:,} tokens in {score.windows:,} windows, {score.seconds:.1f}s "
            f"({rate:,.0f} tokens/s)",
            file=sys.stderr,
            flush=True,
        )
    row["tasks"], predictions = {}, []
    for task in tasks:
        result = score_task(
            model, tok, task, batch_size=opts["batch_size"], dtype=dtype, progress=progress
        )
        row["tasks"][task.name] = result.as_dict()
        predictions += [{"model": name, **p} for p in result.predictions]
        print(
            f"  {task.name}: {result.n} items in {result.seconds:.1f}s",
            file=sys.stderr,
            flush=True,
        )
    return row, predictions


# ----------------------------------------------------------------------------- reporting


def _short_tokenizer(info: dict[str, Any]) -> str:
    kind, _, where = info["name"].partition(":")
    label = Path(where).name if where else kind
    return f"{label} {info['fingerprint'][:8]}"


def result_notes(rows: list[dict[str, Any]]) -> list[str]:
    """What a reader of the table must know: tokenizers that differ, texts cut short."""
    notes = []
    fingerprints = {r["tokenizer"]["fingerprint"] for r in rows}
    if len(fingerprints) > 1 and any("loss" in r for r in rows):
        which = "; ".join(f"{r['name']}: {_short_tokenizer(r['tokenizer'])}" for r in rows)
        notes.append(
            f"the models use different tokenizers ({which}). Their losses, perplexities and "
            "token counts count different tokens and do not compare; bits per byte does (each "
            "divides its nats by the same text's UTF-8 bytes)."
        )
    if any(r.get("tasks") for r in rows):
        notes.append(
            "acc_norm divides each ending's log-probability by its characters, as "
            "lm-evaluation-harness's acc_norm; acc_per_token by its tokens, as llm.c's HellaSwag "
            "(docs/EVAL.md)."
        )
    for r in rows:
        if r.get("text_truncated"):
            notes.append(f"{r['name']}: --max_tokens scored the first {r['tokens']:,} tokens only.")
        for task, t in r.get("tasks", {}).items():
            if t["truncated"]:
                notes.append(
                    f"{r['name']}: {task}: {t['truncated']} of {t['n']} contexts were longer "
                    f"than T={r['T']} allows and lost tokens on the left."
                )
    return notes


def table(rows: list[dict[str, Any]], task_names: list[str]) -> str:
    """Rows models, columns metrics, as aligned text."""
    header = ["model", "params", "T", "tokenizer"]
    has_text = any("loss" in r for r in rows)
    if has_text:
        header += ["loss", "perplexity", "bits/byte", "tokens/byte"]
    for name in task_names:
        n = rows[0]["tasks"][name]["n"] if rows else 0
        header += [f"{name} acc (n={n})", f"{name} acc_norm", f"{name} acc_per_token"]
    lines = [header]
    for r in rows:
        cells = [
            r["name"],
            f"{r['params'] / 1e6:.1f}M",
            str(r["T"]),
            _short_tokenizer(r["tokenizer"]),
        ]
        if has_text:
            cells += [
                f"{r['loss']:.4f}",
                f"{r['perplexity']:.2f}",
                f"{r['bits_per_byte']:.4f}",
                f"{r['tokens_per_byte']:.4f}",
            ]
        for name in task_names:
            t = r["tasks"][name]
            for key in ("acc", "acc_norm", "acc_per_token"):
                lo, hi = t[f"{key}_interval"]
                cells.append(f"{t[key]:.4f} [{lo:.3f}, {hi:.3f}]")
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for line in lines:
        text = [
            c.ljust(w) if i in (0, 3) else c.rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        out.append("  ".join(text).rstrip())
    return "\n".join(out)


def write_outputs(
    report: dict[str, Any], predictions: list[dict[str, Any]], extras: dict[str, str]
) -> None:
    """--json (a file, or - for stdout) and --predictions (JSONL)."""
    from mygpt2.fileio import atomic_write

    text = json.dumps(report, indent=2, allow_nan=True) + "\n"
    if extras.get("json") == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    elif "json" in extras:
        atomic_write(extras["json"], lambda fh: fh.write(text.encode("utf-8")))
        print(f"wrote {extras['json']}", file=sys.stderr)
    if "predictions" in extras:
        body = "".join(json.dumps(p) + "\n" for p in predictions)
        atomic_write(extras["predictions"], lambda fh: fh.write(body.encode("utf-8")))
        print(f"wrote {extras['predictions']}", file=sys.stderr)
