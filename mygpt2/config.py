"""Configuration: plain dataclasses, a TOML file, and `--key value` flags.

The field names are those of the original myGPT2 (`n_layers`, `n_heads`, `n_emb`, `T`,
`macro_batch_size`, ...), so its users feel at home. Defaults live here: edit them to change
what every run does. A run can also read a TOML file (`--config run.toml`, flat keys or
`[model]`/`[train]`/`[data]`/`[sample]` tables) and take flags on the command line; the
flags win. Every field is a flag of the same name in every entry point, which is why field
names are unique across the sections.

Design choices:
- Config is data, never code: TOML is parsed, nothing is executed (unlike nanoGPT's
  `exec`-based configurator).
- Values are checked against the dataclass field types; an unknown key names the closest
  valid one.
- `validate()` catches impossible combinations (say `n_emb % n_heads != 0`) before any work.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mygpt2.errors import MyGPT2Error

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib


@dataclass
class ModelConfig:
    """Shape of the GPT. The default is a small model that trains in minutes on a laptop CPU."""

    n_layers: int = 4  # transformer blocks
    n_heads: int = 4  # attention heads per block
    n_emb: int = 128  # width of the residual stream
    T: int = 128  # context length in tokens
    vocab_size: int = 50257  # replaced by the tokenizer's size when training from a tokenizer
    dropout: float = 0.0
    bias: bool = True  # biases in Linear and LayerNorm layers, as GPT-2
    pad_vocab: bool = False  # pad the embedding to a multiple of 64 for faster matmuls


@dataclass
class TrainConfig:
    """How to train: batch sizes, schedule, precision, checkpoints and outputs."""

    batch_size: int = 16  # sequences per micro-batch on each process
    macro_batch_size: int = 32  # sequences per optimizer step over all processes
    max_steps: int = 1000  # optimizer (macro) steps
    eval_interval: int = 100  # evaluate every this many macro steps
    eval_batches: int = 20  # validation batches per evaluation
    val_batch_size: int = 0  # 0 means the same as batch_size
    lr: float = 1e-3  # peak learning rate
    min_lr: float = 1e-4  # floor of the cosine decay
    warmup_ratio: float = 0.05  # fraction of max_steps spent warming up linearly
    weight_decay: float = 0.1  # on matrices only, never on biases and LayerNorm gains
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clipping: float = 1.0  # clip the global grad norm to this; 0 turns clipping off
    checkpoint_interval: int = 0  # also save every this many steps; 0 means only at the end
    out_dir: str = "out"  # checkpoint.pt, metrics.jsonl, loss_plot.png go here
    init_from: str = "scratch"  # scratch, gpt2, gpt2-medium, ... or a local HF directory
    resume: bool = False  # continue from out_dir/checkpoint.pt
    device: str = "auto"  # auto, cpu, cuda, cuda:1, mps
    dtype: str = "auto"  # auto, float32, bfloat16, float16
    compile: bool = False  # torch.compile the model
    seed: int = 1337
    shuffle: bool = True  # visit training blocks in a seeded random order
    tensorboard: bool = False  # also log to out_dir/tensorboard when tensorboard is installed
    stop_at: int = 0  # stop after this step, checkpointed for --resume; 0 runs to max_steps


@dataclass
class DataConfig:
    """Where the text comes from and how it becomes tokens."""

    data: str = "stdlib"  # a file, a directory, a glob, stdlib, shakespeare, or hf:NAME[:CONFIG]
    data_dir: str = ""  # where prepared token files go; empty means a cache dir keyed by source
    split: float = 0.9  # fraction of tokens used for training, the rest for validation
    use_tiktoken: bool = False  # True: GPT-2's tiktoken encoding; False: our tokenizer.json
    tokenizer_path: str = "tokenizer.json"
    tiktoken_file: str = ""  # a local gpt2.tiktoken, so the tiktoken route works offline
    split_pattern: str = "gpt4"  # tokenizer training: gpt4, gpt2, or a regex
    stdlib_max_mb: float = 8.0  # size cap of the built-in stdlib corpus
    strict_utf8: bool = False  # refuse non-UTF-8 bytes instead of replacing them with U+FFFD
    cache_dir: str = "data_cache"  # prepared token files and downloads, relative to the CWD
    shakespeare_path: str = ""  # a local tinyshakespeare.txt (or env MYGPT2_SHAKESPEARE)
    single_pass: bool = False  # train on each block once (one epoch) instead of max_steps


@dataclass
class SampleConfig:
    """How to sample text from a trained model."""

    start: str = ""  # start text, or FILE:path; empty starts a new document (<|endoftext|>)
    num_samples: int = 1
    max_new_tokens: int = 256
    temperature: float = 0.8
    top_k: int = 200  # 0 turns top-k off
    top_p: float = 1.0  # nucleus sampling; 1.0 turns it off
    prompt: bool = False  # interactive mode
    allow_special: bool = False  # let special-token text in a prompt become special tokens
    checkpoint: str = ""  # empty means out_dir/checkpoint.pt


@dataclass
class Config:
    """Everything one run needs, in four sections."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain nested dict (for checkpoints, logs and TOML)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        """Inverse of `to_dict`; also accepts flat keys. Unknown keys are errors."""
        cfg = cls()
        apply_values(cfg, _flatten(d, "<dict>"), "<dict>")
        return cfg

    @classmethod
    def from_saved(cls, d: dict[str, Any]) -> Config:
        """A config saved by any mygpt2 version (say in a checkpoint): keys this version does not
        know are dropped, keys it added since take their defaults."""
        known = field_sections()
        return cls.from_dict({k: v for k, v in _flatten(d, "<saved>").items() if k in known})

    def override_with(self, other: Config) -> Config:
        """A copy of this config with every field that `other` sets to a non-default value."""
        merged, defaults = Config.from_saved(self.to_dict()), Config()
        for section in SECTIONS:
            for f in dataclasses.fields(getattr(other, section)):
                value = getattr(getattr(other, section), f.name)
                if value != getattr(getattr(defaults, section), f.name):
                    setattr(getattr(merged, section), f.name, value)
        return merged


SECTIONS = ("model", "train", "data", "sample")

# Named model shapes. The "small" preset is the default ModelConfig: fast on a CPU.
PRESETS: dict[str, dict[str, Any]] = {
    "small": dict(n_layers=4, n_heads=4, n_emb=128, T=128),
    "gpt2": dict(n_layers=12, n_heads=12, n_emb=768, T=1024, vocab_size=50257),
    "gpt2-medium": dict(n_layers=24, n_heads=16, n_emb=1024, T=1024, vocab_size=50257),
    "gpt2-large": dict(n_layers=36, n_heads=20, n_emb=1280, T=1024, vocab_size=50257),
    "gpt2-xl": dict(n_layers=48, n_heads=25, n_emb=1600, T=1024, vocab_size=50257),
}


def field_sections() -> dict[str, str]:
    """Map every field name to the section that holds it."""
    out = {}
    for section in SECTIONS:
        for f in dataclasses.fields(getattr(Config(), section)):
            out[f.name] = section
    return out


def _closest(name: str, candidates: list[str]) -> str:
    match = difflib.get_close_matches(name, candidates, n=1, cutoff=0.5)
    return f" Did you mean '{match[0]}'?" if match else ""


def _field_type(section_obj: Any, name: str) -> type:
    hints = typing.get_type_hints(type(section_obj))
    t = hints[name]
    # Optional[X] / X | None: take X
    if isinstance(t, types.UnionType) or typing.get_origin(t) is typing.Union:
        t = next(a for a in typing.get_args(t) if a is not type(None))
    return t


TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")


def convert_value(name: str, raw: Any, typ: type, where: str) -> Any:
    """Turn a flag string or TOML value into the field's type, or explain why not."""
    bad = MyGPT2Error(
        f"{where}: '{name}' must be {typ.__name__}, got {raw!r}."
        + (" Use true or false." if typ is bool else "")
    )
    if typ is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in TRUE_WORDS:
            return True
        if isinstance(raw, str) and raw.lower() in FALSE_WORDS:
            return False
        raise bad
    if typ is int:
        if isinstance(raw, bool):
            raise bad
        if isinstance(raw, int):
            return raw
        if isinstance(raw, str):
            try:
                return int(raw.replace("_", ""))
            except ValueError:
                raise bad from None
        raise bad
    if typ is float:
        if isinstance(raw, bool):
            raise bad
        if isinstance(raw, (int, float)):
            return float(raw)
        if isinstance(raw, str):
            try:
                return float(raw)
            except ValueError:
                raise bad from None
        raise bad
    if typ is str:
        if isinstance(raw, str):
            return raw
        raise bad
    raise TypeError(f"unsupported config type {typ}")


def _flatten(d: dict[str, Any], where: str) -> dict[str, Any]:
    """Accept both flat keys and one level of [section] tables."""
    flat: dict[str, Any] = {}
    for key, value in d.items():
        if key in SECTIONS and isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def apply_values(cfg: Config, values: dict[str, Any], where: str) -> None:
    """Set fields by name, checking names and types."""
    sections = field_sections()
    for key, raw in values.items():
        if key == "preset":
            apply_preset(cfg, convert_value("preset", raw, str, where))
            continue
        if key not in sections:
            raise MyGPT2Error(
                f"{where}: unknown config key '{key}'.{_closest(key, [*sections, 'preset'])}"
            )
        section = getattr(cfg, sections[key])
        setattr(section, key, convert_value(key, raw, _field_type(section, key), where))


def apply_preset(cfg: Config, name: str) -> None:
    """Set the model shape from a named preset."""
    if name not in PRESETS:
        raise MyGPT2Error(
            f"unknown preset '{name}'.{_closest(name, list(PRESETS))} "
            f"Presets: {', '.join(PRESETS)}."
        )
    for key, value in PRESETS[name].items():
        setattr(cfg.model, key, value)


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file into flat key/value pairs."""
    p = Path(path)
    if not p.is_file():
        raise MyGPT2Error(f"config file '{p}' does not exist.")
    try:
        with open(p, "rb") as fh:
            return _flatten(tomllib.load(fh), str(p))
    except tomllib.TOMLDecodeError as e:
        raise MyGPT2Error(f"config file '{p}' is not valid TOML: {e}") from None


def parse_flags(
    argv: list[str], extra_flags: tuple[str, ...] = ()
) -> tuple[dict[str, str], list[str]]:
    """Split `--key value`, `--key=value` and bare `--flag` (true) into a dict and positionals.

    Bare boolean flags (`--resume`, `--prompt`, `--compile`) mean true. Names in
    `extra_flags` are accepted besides config fields (say `--config`).
    """
    sections = field_sections()
    bool_fields = {
        name for name, sec in sections.items() if _field_type(getattr(Config(), sec), name) is bool
    }
    known = set(sections) | {"config", "preset", *extra_flags}
    values: dict[str, str] = {}
    positional: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            positional.extend(argv[i + 1 :])
            break
        if arg.startswith("--") and len(arg) > 2:
            key, eq, value = arg[2:].partition("=")
            key = key.replace("-", "_") if key.replace("-", "_") in known else key
            if key not in known:
                raise MyGPT2Error(
                    f"unknown flag '--{key}'.{_closest(key, sorted(known))} "
                    "Run with --help to list the flags."
                )
            if not eq:
                nxt = argv[i + 1] if i + 1 < len(argv) else None
                # `--compile 0` must mean false, not a bare `--compile` and a stray "0"
                is_bool_value = nxt is not None and nxt.lower() in TRUE_WORDS + FALSE_WORDS
                if key in bool_fields and not is_bool_value:
                    value = "true"
                elif nxt is None or (nxt.startswith("--") and len(nxt) > 2):
                    raise MyGPT2Error(f"flag '--{key}' needs a value.")
                else:
                    value = nxt
                    i += 1
            values[key] = value
        else:
            positional.append(arg)
        i += 1
    return values, positional


def load_config(
    argv: list[str], extra_flags: tuple[str, ...] = ()
) -> tuple[Config, dict[str, str], list[str]]:
    """Defaults, then `--preset`, then `--config FILE`, then flags. Returns the validated config,
    the values of `extra_flags` that were given, and positional arguments."""
    values, positional = parse_flags(argv, extra_flags)
    extras = {k: values.pop(k) for k in list(values) if k in extra_flags}
    cfg = Config()
    if "preset" in values:
        apply_preset(cfg, values.pop("preset"))
    if "config" in values:
        path = values.pop("config")
        apply_values(cfg, load_toml(path), path)
    apply_values(cfg, values, "command line")
    validate(cfg)
    return cfg, extras, positional


def validate(cfg: Config) -> None:
    """Reject impossible settings before any work starts."""
    m, t, d, s = cfg.model, cfg.train, cfg.data, cfg.sample
    checks = [
        (m.n_layers >= 1, f"n_layers must be at least 1, got {m.n_layers}."),
        (m.n_heads >= 1, f"n_heads must be at least 1, got {m.n_heads}."),
        (m.n_emb >= 1, f"n_emb must be at least 1, got {m.n_emb}."),
        (
            m.n_emb % max(m.n_heads, 1) == 0,
            f"n_emb ({m.n_emb}) must be divisible by n_heads ({m.n_heads}): each head gets "
            "n_emb / n_heads channels. Change one of them.",
        ),
        (m.T >= 1, f"T (context length) must be at least 1, got {m.T}."),
        (m.vocab_size >= 1, f"vocab_size must be at least 1, got {m.vocab_size}."),
        (0.0 <= m.dropout < 1.0, f"dropout must be in [0, 1), got {m.dropout}."),
        (t.batch_size >= 1, f"batch_size must be at least 1, got {t.batch_size}."),
        (
            t.macro_batch_size >= 1,
            f"macro_batch_size must be at least 1, got {t.macro_batch_size}.",
        ),
        (t.max_steps >= 1, f"max_steps must be at least 1, got {t.max_steps}."),
        (t.eval_interval >= 1, f"eval_interval must be at least 1, got {t.eval_interval}."),
        (t.eval_batches >= 1, f"eval_batches must be at least 1, got {t.eval_batches}."),
        (t.val_batch_size >= 0, f"val_batch_size must be 0 or more, got {t.val_batch_size}."),
        (t.lr > 0, f"lr must be positive, got {t.lr}."),
        (0 <= t.min_lr <= t.lr, f"min_lr must be in [0, lr={t.lr}], got {t.min_lr}."),
        (0.0 <= t.warmup_ratio <= 1.0, f"warmup_ratio must be in [0, 1], got {t.warmup_ratio}."),
        (t.weight_decay >= 0, f"weight_decay must be 0 or more, got {t.weight_decay}."),
        (t.grad_clipping >= 0, f"grad_clipping must be 0 or more, got {t.grad_clipping}."),
        (t.stop_at >= 0, f"stop_at must be 0 or more, got {t.stop_at}."),
        (
            t.checkpoint_interval >= 0,
            f"checkpoint_interval must be 0 or more, got {t.checkpoint_interval}.",
        ),
        (
            t.dtype in ("auto", "float32", "bfloat16", "float16"),
            f"dtype must be auto, float32, bfloat16 or float16, got '{t.dtype}'.",
        ),
        (0.0 < d.split < 1.0, f"split must be strictly between 0 and 1, got {d.split}."),
        (d.stdlib_max_mb > 0, f"stdlib_max_mb must be positive, got {d.stdlib_max_mb}."),
        (s.num_samples >= 1, f"num_samples must be at least 1, got {s.num_samples}."),
        (s.max_new_tokens >= 0, f"max_new_tokens must be 0 or more, got {s.max_new_tokens}."),
        (s.temperature >= 0, f"temperature must be 0 or more, got {s.temperature}."),
        (s.top_k >= 0, f"top_k must be 0 (off) or positive, got {s.top_k}."),
        (0.0 < s.top_p <= 1.0, f"top_p must be in (0, 1], got {s.top_p}."),
    ]
    for ok, message in checks:
        if not ok:
            raise MyGPT2Error(message)


def wants_gpt2_tokenizer(cfg: Config) -> bool:
    """Starting from Hugging Face weights, use GPT-2's tokenizer unless a tokenizer.json was
    named (and no tiktoken file): GPT-2's weights speak GPT-2's tokens, an exported mygpt2
    model may not."""
    named = cfg.data.tokenizer_path != DataConfig().tokenizer_path
    gpt2 = cfg.data.use_tiktoken or bool(cfg.data.tiktoken_file) or not named
    return cfg.train.init_from != "scratch" and gpt2


def format_config(cfg: Config) -> str:
    """The resolved config as TOML-like text, printed at the start of a run."""
    lines = []
    for section in SECTIONS:
        lines.append(f"[{section}]")
        for key, value in dataclasses.asdict(getattr(cfg, section)).items():
            shown = (
                f'"{value}"'
                if isinstance(value, str)
                else str(value).lower()
                if isinstance(value, bool)
                else value
            )
            lines.append(f"{key} = {shown}")
    return "\n".join(lines)


def flags_help() -> str:
    """One line per flag with its default, for --help."""
    lines = []
    cfg = Config()
    for section in SECTIONS:
        lines.append(f"  [{section}]")
        for f in dataclasses.fields(getattr(cfg, section)):
            default = getattr(getattr(cfg, section), f.name)
            lines.append(f"    --{f.name} (default: {default!r})")
    return "\n".join(lines)


if __name__ == "__main__":  # print the defaults
    print(format_config(Config()), file=sys.stdout)
