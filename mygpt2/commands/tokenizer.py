"""`mygpt2 tokenizer train|show|stats`: train a BPE tokenizer, see how it cuts text, measure it.

- `train` takes the config fields as flags (`--data`, `--vocab_size`, `--tokenizer_path`,
  `--split_pattern gpt4|gpt2|REGEX`) and writes `tokenizer.json`. The text comes from
  `mygpt2.corpus`: a file, a directory, a glob, `stdlib`, `shakespeare` or `hf:NAME`; each
  file (or dataset row) is one document.
- `show TEXT` prints the text with token boundaries visible (alternating background colours
  in a terminal, `|` between tokens when piped) and then the ids.
- `stats FILE` prints the vocabulary size and the compression (bytes per token) on a file.

`show` and `stats` use the tokenizer that training would use: `--tokenizer_path`, or GPT-2's
with `--use_tiktoken` (and `--tiktoken_file` offline).
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from mygpt2.commands.args import Command, UsageError, help_text, parse, wants_help
from mygpt2.config import Config
from mygpt2.corpus import Corpus, open_corpus
from mygpt2.errors import MyGPT2Error
from mygpt2.tokenizer import RegexTokenizer, check_vocab_size, load_tokenizer, pattern_name

USAGE = """usage:
  mygpt2 tokenizer train [--data PATH] [--vocab_size N] [--tokenizer_path tokenizer.json]
                         [--split_pattern gpt4|gpt2|REGEX] [--export_tiktoken FILE]
  mygpt2 tokenizer show "some text" [--tokenizer_path P | --use_tiktoken [--tiktoken_file F]]
  mygpt2 tokenizer stats FILE [--tokenizer_path P | --use_tiktoken [--tiktoken_file F]]

`show` reads standard input when no text is given. 'mygpt2 tokenizer SUB --help' lists the
flags of one subcommand."""

TRAIN = Command(
    name="tokenizer train",
    usage="usage: mygpt2 tokenizer train [--data PATH] [--vocab_size N] [--FLAG VALUE ...]\n\n"
    "Learn a byte-level BPE from --data and write it to --tokenizer_path.",
    sections={
        "model": ("vocab_size",),
        "data": ("data", "stdlib_max_mb", "strict_utf8", "cache_dir", "shakespeare_path"),
        "tokenizer": ("tokenizer_path", "split_pattern"),
        "run": ("overwrite",),
    },
    extra={"export_tiktoken": "also write the merges as a .tiktoken file here"},
)
_USING = ("use_tiktoken", "tokenizer_path", "tiktoken_file")
SHOW = Command(
    name="tokenizer show",
    usage='usage: mygpt2 tokenizer show "TEXT" [--FLAG VALUE ...]\n\n'
    "Print TEXT (or standard input) cut into tokens, then the ids.",
    sections={"tokenizer": _USING, "sample": ("allow_special",)},
)
STATS = Command(
    name="tokenizer stats",
    usage="usage: mygpt2 tokenizer stats FILE [--FLAG VALUE ...]\n\n"
    "Print the vocabulary size and the compression (bytes per token) on FILE.",
    sections={"tokenizer": _USING},
)
SUBCOMMANDS = {"train": TRAIN, "show": SHOW, "stats": STATS}

# light backgrounds with black text: readable on dark and light terminals
_COLOURS = [153, 229, 194, 224, 189, 255]


def cli(argv: list[str]) -> None:
    """Dispatch `train`, `show` and `stats`."""
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    sub, rest = argv[0], argv[1:]
    if sub not in SUBCOMMANDS:
        raise UsageError(f"unknown tokenizer command '{sub}': use train, show or stats.\n{USAGE}")
    if wants_help(rest):
        print(help_text(SUBCOMMANDS[sub]))
        return
    {"train": train_cli, "show": show_cli, "stats": stats_cli}[sub](rest)


# ---- train ----------------------------------------------------------------------------------


def training_documents(source: Corpus) -> Iterator[str]:
    """The corpus's documents, one string each."""
    # a document arrives in pieces cut anywhere; BPE chunks must not be cut, so join them
    return ("".join(pieces) for pieces in source.documents())


def train_cli(argv: list[str]) -> None:
    """`mygpt2 tokenizer train`: learn merges from --data and write --tokenizer_path."""
    args = parse(argv, TRAIN)
    if args.positional:
        raise UsageError(
            f"unexpected argument(s) {args.positional}: give the corpus as --data PATH."
        )
    train_tokenizer(args.config, args.extras.get("export_tiktoken"))


def train_tokenizer(cfg: Config, export_tiktoken: str | None = None) -> RegexTokenizer:
    """Train a `vocab_size` BPE on `data` and save it to `tokenizer_path`, reporting progress."""
    verbose = sys.stderr.isatty()  # progress bars only for people, not for logs
    vocab_size, path = cfg.model.vocab_size, cfg.tokenizer.tokenizer_path
    tok = RegexTokenizer(cfg.tokenizer.split_pattern)
    check_vocab_size(vocab_size, len(tok.special_tokens))  # before reading any text
    if not cfg.run.overwrite:
        refuse_overwrite(Path(path), cfg)
    source = open_corpus(cfg.data)
    print(
        f"training a {vocab_size}-token BPE ({pattern_name(tok.pattern)} split pattern) "
        f"on {source.description}",
        file=sys.stderr,
    )
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tok.train(training_documents(source), vocab_size, verbose=verbose)
    if source.replaced_bytes:
        caught_text = (
            f"{source.replaced_bytes} byte(s) of the corpus were not valid UTF-8 and were "
            "replaced with U+FFFD; --strict_utf8 true refuses them instead"
        )
        print(f"warning: {caught_text}", file=sys.stderr)
    for message in [*source.warnings, *(w.message for w in caught)]:
        print(f"warning: {message}", file=sys.stderr)
    tok.save(path)
    if export_tiktoken:
        tok.save_tiktoken(export_tiktoken)
    print(
        f"wrote {path}: {tok.vocab_size} tokens in {time.perf_counter() - t0:.1f} s "
        f"(fingerprint {tok.fingerprint()[:16]})"
    )
    return tok


def refuse_overwrite(path: Path, cfg: Config) -> None:
    """Stop before replacing an existing tokenizer file, saying what holds it and who uses it:
    checkpoints and prepared token files made with it would be orphaned."""
    if not path.exists():
        return
    try:
        old = RegexTokenizer.load(path)
        stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(path.stat().st_mtime))
        what = f"a {old.vocab_size}-token tokenizer (fingerprint {old.fingerprint()[:12]}, {stamp})"
        users = tokenizer_users(old.fingerprint(), path, cfg)
    except MyGPT2Error:
        what, users = "a file that is not a readable tokenizer", []
    used = f" It is used by: {'; '.join(users)}." if users else ""
    raise MyGPT2Error(
        f"'{path}' already holds {what}.{used} Training would replace it: choose another "
        "--tokenizer_path, or pass --overwrite to replace it."
    )


def tokenizer_users(fingerprint: str, path: Path, cfg: Config) -> list[str]:
    """Checkpoints (beside the tokenizer and in the working directory's subdirectories) and
    prepared token files (in the cache) made with the tokenizer of this fingerprint."""
    import json

    from mygpt2.fileio import user_cache_dir

    users = []
    for meta in sorted(user_cache_dir(cfg.data.cache_dir).glob("*/meta.json")):
        try:
            made = json.loads(meta.read_text(encoding="utf-8"))["tokenizer"]["fingerprint"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if made == fingerprint:
            users.append(f"prepared data {meta.parent}")
    places = {path.parent, Path.cwd()}
    candidates = {c for p in places for c in [p / "checkpoint.pt", *p.glob("*/checkpoint.pt")]}
    if candidates := sorted(c for c in candidates if c.is_file()):
        import torch  # only when there are checkpoints to look into

        for ckpt in candidates:
            try:
                state = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
                if state.get("tokenizer", {}).get("fingerprint") == fingerprint:
                    users.append(f"checkpoint {ckpt}")
            except Exception:  # unreadable checkpoints are not this question's business
                continue
    return users


# ---- show and stats -------------------------------------------------------------------------


def render_tokens(tok: RegexTokenizer, ids: list[int], colour: bool) -> str:
    """The text of `ids` with boundaries visible. Bytes of one character split over several
    tokens are shown together, since half a character cannot be printed."""
    segments: list[str] = []
    buf = b""
    for i in ids:
        buf += tok.token_bytes(i)
        try:
            segments.append(buf.decode("utf-8"))
            buf = b""
        except UnicodeDecodeError:
            continue
    if buf:
        segments.append(buf.decode("utf-8", errors="replace"))
    if not colour:
        return "|".join(segments)
    out = []
    for k, seg in enumerate(segments):
        start = f"\x1b[30;48;5;{_COLOURS[k % len(_COLOURS)]}m"
        # reset before each newline so the colour does not fill the rest of the line
        out.append(start + seg.replace("\n", "\x1b[0m\n" + start) + "\x1b[0m")
    return "".join(out)


def show_cli(argv: list[str]) -> None:
    """`mygpt2 tokenizer show TEXT`: the text cut into tokens, then the ids."""
    args = parse(argv, SHOW)
    tok = load_tokenizer(args.config.tokenizer)
    text = " ".join(args.positional) if args.positional else sys.stdin.read()
    ids = tok.encode(text, allowed_special="all" if args.config.sample.allow_special else "none")
    colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    print(render_tokens(tok, ids, colour))
    print(ids)
    # the bytes the tokens spell: text from a terminal may hold undecodable bytes, which the
    # tokenizer takes as U+FFFD and which have no UTF-8 of their own
    print(f"{len(ids)} tokens, {len(tok.decode_bytes(ids))} bytes ({tok.name})")


def stats_cli(argv: list[str]) -> None:
    """`mygpt2 tokenizer stats FILE`: vocabulary size and bytes per token on FILE."""
    args = parse(argv, STATS)
    positional = args.positional
    if len(positional) != 1:
        raise UsageError("stats needs one text file: mygpt2 tokenizer stats FILE.")
    path = Path(positional[0])
    if path.is_dir():
        raise MyGPT2Error(f"'{path}' is a directory; stats reads one text file.")
    if not path.is_file():
        raise MyGPT2Error(f"file '{path}' does not exist.")
    tok = load_tokenizer(args.config.tokenizer)
    raw = path.read_bytes()  # as prepare reads files: line ends kept, bad bytes U+FFFD
    text = raw.decode("utf-8", errors="replace")
    t0 = time.perf_counter()
    n = len(tok.encode_ordinary(text))
    dt = time.perf_counter() - t0
    size = len(raw)  # the file's own size
    print(f"tokenizer:   {tok.name}")
    print(f"vocab size:  {tok.vocab_size}")
    print(f"file:        {path} ({size} bytes)")
    print(f"tokens:      {n}")
    print(f"bytes/token: {size / max(n, 1):.3f}")
    print(f"encode:      {size / 1e6 / max(dt, 1e-9):.1f} MB/s")
