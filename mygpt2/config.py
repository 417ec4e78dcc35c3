"""Configuration: plain dataclasses that say what each setting means, and know who set it.

The field names are those of the original myGPT2 (`n_layers`, `n_heads`, `n_emb`, `T`,
`macro_batch_size`, ...), so its users feel at home. Every field carries a one-line help text
(and a unit where it has one) in its metadata: `--help` prints it, and so does this file.

Sections (a TOML file may use them as tables, `[train]`, or flat keys: names are unique):
- `model`: the network's shape;              - `run`: which weights, where, on what device;
- `train`: optimisation, evaluation, saving; - `data`: where the text comes from;
- `tokenizer`: which tokenizer turns text into ids; - `sample`: how to generate text.

Design choices:
- Config is data, never code: TOML is parsed, nothing is executed (unlike nanoGPT's
  `exec`-based configurator). Reading flags and files lives in `mygpt2.commands.args`.
- The config knows what was said: `Config.given` maps each key the user set to where it came
  from (`flag`, `file run.toml`, `preset gpt2`). Resuming takes the checkpoint's settings
  except the given ones, so "was this flag given?" is never guessed by comparing a value with
  its default.
- `validate()` catches impossible combinations (say `n_emb % n_heads != 0`) before any work.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
import warnings
from dataclasses import dataclass, field
from typing import Any

from mygpt2.errors import MyGPT2Error
from mygpt2.presets import PRESETS
from mygpt2.sampling_settings import check_sampling


def option(default: Any, help: str, unit: str = "") -> Any:
    """A config field with its help text (and unit), shown by `--help`."""
    return field(default=default, metadata={"help": help, "unit": unit})


@dataclass
class ModelConfig:
    """Shape of the GPT. The default is a small model that trains in minutes on a laptop CPU."""

    n_layers: int = option(4, "transformer blocks")
    n_heads: int = option(4, "attention heads per block")
    n_emb: int = option(128, "width of the residual stream", "channels")
    T: int = option(128, "context length", "tokens")
    vocab_size: int = option(
        50257, "vocabulary size; training takes the tokenizer's, `tokenizer train` builds it"
    )
    dropout: float = option(0.0, "dropout probability in attention and MLP outputs")
    bias: bool = option(True, "biases in Linear and LayerNorm layers, as GPT-2")
    pad_vocab: bool = option(False, "pad the embedding to a multiple of 64 for faster matmuls")
    # Architecture knobs (docs/EXPERIMENTS.md); the defaults are GPT-2's own.
    norm: str = option("layernorm", "layernorm (GPT-2) or rmsnorm")
    pos_emb: str = option("learned", "learned (GPT-2), rope (rotary) or none")
    mlp: str = option("gelu", "gelu (GPT-2), relu2 (ReLU squared) or swiglu")
    qk_norm: bool = option(False, "RMS-normalise each head's queries and keys before attention")
    tie_embeddings: bool = option(True, "output head shares the token embedding, as GPT-2")
    logit_softcap: float = option(0.0, "logits become cap * tanh(logits / cap); 0 turns it off")


@dataclass
class RunConfig:
    """Which weights a command starts from, where its files go, and what it runs on."""

    out_dir: str = option(
        "out", "checkpoint.pt, metrics.jsonl, loss_plot.png, generated.txt go here"
    )
    checkpoint: str = option("", "checkpoint to read; empty means out_dir/checkpoint.pt")
    init_from: str = option(
        "scratch",
        "scratch (a new model or out_dir's checkpoint), gpt2, gpt2-medium, ... or a HF dir",
    )
    device: str = option("auto", "auto, cpu, cuda, cuda:1 or mps")
    dtype: str = option("auto", "auto, float32, bfloat16 or float16 (training: autocast)")
    seed: int = option(1337, "random seed (sampling: the first sample's seed)")
    overwrite: bool = option(False, "replace what out_dir (or tokenizer_path) already holds")
    break_lock: bool = option(False, "take out_dir's lock even if another host's run holds it")


@dataclass
class TrainConfig:
    """How to train: batch sizes, schedule, evaluation, checkpoints."""

    batch_size: int = option(16, "sequences per micro-batch on each process")
    macro_batch_size: int = option(32, "sequences per optimizer step over all processes")
    max_steps: int = option(1000, "optimizer (macro) steps")
    eval_interval: int = option(100, "evaluate every this many steps", "steps")
    eval_batches: int = option(20, "validation batches per evaluation")
    val_batch_size: int = option(0, "sequences per validation batch; 0 means batch_size")
    eval_data: str = option(
        "", "also score this text at each evaluation (a --data source), in bits per byte"
    )
    eval_tasks: str = option("", "also score these multiple-choice JSONL files at each evaluation")
    eval_stride: int = option(0, "eval_data's sliding-window stride; 0 means T", "tokens")
    lr: float = option(1e-3, "peak learning rate")
    min_lr: float = option(1e-4, "where the schedule ends (cosine, linear, wsd)")
    warmup_ratio: float = option(0.05, "fraction of max_steps spent warming up linearly")
    weight_decay: float = option(0.1, "AdamW decay, on matrices only (not biases or gains)")
    beta1: float = option(0.9, "AdamW beta1")
    beta2: float = option(0.95, "AdamW beta2")
    optimizer: str = option(
        "adamw", "adamw, muon (Muon for the blocks' matrices, AdamW for the rest) or sgd"
    )
    muon_lr: float = option(0.02, "muon: peak learning rate of the blocks' matrices")
    momentum: float = option(0.95, "muon and sgd: momentum (Nesterov)")
    schedule: str = option("cosine", "after warmup: cosine, linear, wsd or constant")
    decay_ratio: float = option(0.2, "wsd: fraction of max_steps spent decaying to min_lr")
    target_val_loss: float = option(
        0.0, "stop at the first evaluation at or below this val loss; 0 turns it off"
    )
    grad_clipping: float = option(1.0, "clip the global gradient norm to this; 0 turns it off")
    checkpoint_interval: int = option(
        0, "also save every this many steps; 0: at evaluations, the end and by time", "steps"
    )
    checkpoint_minutes: float = option(
        10.0,
        "save at least this often (besides every evaluation), bounding what a kill loses; "
        "0 turns the time bound off",
        "minutes",
    )
    resume: bool = option(False, "continue from out_dir/checkpoint.pt")
    allow_data_change: bool = option(
        False, "let --resume continue on other or changed data (logged in metrics.jsonl)"
    )
    compile: bool = option(False, "torch.compile the model")
    shuffle: bool = option(True, "visit training blocks in a seeded random order")
    tensorboard: bool = option(False, "also log to out_dir/tensorboard (needs tensorboard)")
    single_pass: bool = option(False, "train on each block once (one epoch) instead of max_steps")
    stop_at: int = option(0, "stop after this step, checkpointed for --resume; 0: run to max_steps")
    health_interval: int = option(
        0,
        "record per-layer health (gradient and update norms, attention entropy, dead units) "
        "every this many steps; 0 turns it off",
        "steps",
    )
    keep_checkpoints: str = option(
        "none",
        "weights-only snapshots in out_dir/checkpoints: none, log (steps 1, 2, 4, 8, ... and "
        "every evaluation) or all (at every checkpoint save)",
    )


@dataclass
class DataConfig:
    """Where the text comes from and where its token files go."""

    data: str = option(
        "stdlib", "a file, a directory, a glob, stdlib, shakespeare, or hf:NAME[:CONFIG]"
    )
    data_dir: str = option("", "where prepared token files go; empty: a cache dir keyed by source")
    split: float = option(0.9, "fraction of tokens used for training, the rest for validation")
    stdlib_max_mb: float = option(8.0, "size cap of the built-in stdlib corpus", "MB")
    strict_utf8: bool = option(
        False, "refuse non-UTF-8 bytes instead of replacing them with U+FFFD"
    )
    cache_dir: str = option(
        "", "prepared token files and downloads; empty: $MYGPT2_CACHE, else the user cache dir"
    )
    shakespeare_path: str = option("", "a local tinyshakespeare.txt (or env MYGPT2_SHAKESPEARE)")


@dataclass
class TokenizerConfig:
    """Which tokenizer turns text into ids."""

    use_tiktoken: bool = option(False, "GPT-2's tiktoken encoding instead of tokenizer_path")
    tokenizer_path: str = option(
        "tokenizer.json", "our tokenizer file (mygpt2 tokenizer train), or bytes: 256 bytes + eot"
    )
    tiktoken_file: str = option("", "a local gpt2.tiktoken, so the tiktoken route works offline")
    split_pattern: str = option("gpt4", "tokenizer training: gpt4, gpt2, or a regex")


@dataclass
class SampleConfig:
    """How to sample text from a trained model."""

    start: str = option("", "start text, or FILE:path; empty starts a new document")
    num_samples: int = option(1, "samples to write")
    max_new_tokens: int = option(256, "tokens to generate per sample")
    temperature: float = option(0.8, "0 means greedy")
    top_k: int = option(200, "keep the k most likely tokens; 0 turns top-k off")
    top_p: float = option(1.0, "nucleus sampling; 1.0 turns it off")
    prompt: bool = option(False, "interactive mode")
    allow_special: bool = option(False, "let special-token text in a prompt become special tokens")


SECTIONS = ("model", "run", "train", "data", "tokenizer", "sample")
OPTIMIZERS = ("adamw", "muon", "sgd")
SCHEDULES = ("cosine", "linear", "wsd", "constant")

# Keys that describe one invocation, never inherited from a checkpoint on --resume.
PER_INVOCATION = frozenset(
    {"resume", "stop_at", "checkpoint", "overwrite", "break_lock", "allow_data_change"}
)


@dataclass
class Config:
    """Everything one command needs, in six sections, and who set what (`given`)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    run: RunConfig = field(default_factory=RunConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    # key -> where its value came from ("flag", "file run.toml", "preset gpt2", "checkpoint")
    given: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def get(self, key: str) -> Any:
        """The value of a field, by its (unique) name."""
        return getattr(getattr(self, field_sections()[key]), key)

    def set(self, key: str, value: Any, origin: str = "python") -> None:
        """Set a field by name, checking its type, and record where the value came from."""
        apply_values(self, {key: value}, origin)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain nested dict of the six sections (for checkpoints, logs and TOML)."""
        return {s: dataclasses.asdict(getattr(self, s)) for s in SECTIONS}

    @classmethod
    def from_dict(cls, d: dict[str, Any], origin: str = "python") -> Config:
        """Inverse of `to_dict`; also accepts flat keys. Unknown keys are errors."""
        cfg = cls()
        apply_values(cfg, flatten(d), origin)
        return cfg

    @classmethod
    def from_saved(cls, d: dict[str, Any]) -> Config:
        """A config saved by any mygpt2 version (say in a checkpoint): keys this version does not
        know are dropped, keys it added since take their defaults. Nothing counts as given."""
        known = field_sections()
        cfg = cls.from_dict({k: v for k, v in flatten(d).items() if k in known})
        cfg.given = {}
        return cfg


def field_sections() -> dict[str, str]:
    """Map every field name to the section that holds it."""
    return {f.name: s for s in SECTIONS for f in dataclasses.fields(SECTION_TYPES[s])}


def section_fields(section: str) -> list[dataclasses.Field]:
    """The fields of one section, in declaration order (help text in `.metadata`)."""
    return list(dataclasses.fields(SECTION_TYPES[section]))


def closest(name: str, candidates: list[str]) -> str:
    """' Did you mean 'x'?' for the nearest candidate, or ''."""
    match = difflib.get_close_matches(name, candidates, n=1, cutoff=0.5)
    return f" Did you mean '{match[0]}'?" if match else ""


def field_type(key: str) -> type:
    """The Python type of a field (bool, int, float or str)."""
    t = typing.get_type_hints(SECTION_TYPES[field_sections()[key]])[key]
    # Optional[X] / X | None: take X
    if isinstance(t, types.UnionType) or typing.get_origin(t) is typing.Union:
        t = next(a for a in typing.get_args(t) if a is not type(None))
    return t


TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")


def convert_value(name: str, raw: Any, typ: type, where: str, typed: bool = False) -> Any:
    """Turn a flag string or TOML value into the field's type, or explain why not. A `typed`
    source (a TOML file) has numbers and booleans of its own: a string there is refused for
    them, as a slip (`n_layers = "2"`), where a flag's text is parsed."""
    quoted = typed and isinstance(raw, str) and typ is not str
    hint = " Use true or false." if typ is bool else ""
    if quoted:
        hint = " Use true or false, without quotes." if typ is bool else " Write it without quotes."
    bad = MyGPT2Error(f"{where}: '{name}' must be {typ.__name__}, got {raw!r}.{hint}")
    if quoted:
        raise bad
    if typ is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in TRUE_WORDS:
            return True
        if isinstance(raw, str) and raw.lower() in FALSE_WORDS:
            return False
        raise bad
    if isinstance(raw, bool) and typ is not str:
        raise bad
    if typ is int:
        if isinstance(raw, int):
            return raw
        if isinstance(raw, str):
            try:
                return int(raw.replace("_", ""))
            except ValueError:
                raise bad from None
        raise bad
    if typ is float:
        if isinstance(raw, (int, float)):
            return float(raw)
        if isinstance(raw, str):
            try:
                return float(raw)
            except ValueError:
                raise bad from None
        raise bad
    if typ is str and isinstance(raw, str):
        return raw
    raise bad


def flatten(d: dict[str, Any]) -> dict[str, Any]:
    """Accept both flat keys and one level of [section] tables (any section's name)."""
    flat: dict[str, Any] = {}
    for key, value in d.items():
        if key in SECTIONS and isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def apply_values(cfg: Config, values: dict[str, Any], origin: str) -> None:
    """Set fields by name, checking names and types; record each key's origin in `cfg.given`."""
    sections = field_sections()
    for key, raw in values.items():
        if key == "preset":
            apply_preset(cfg, convert_value("preset", raw, str, origin), origin)
            continue
        if key not in sections:
            raise MyGPT2Error(
                f"{origin}: unknown config key '{key}'.{closest(key, [*sections, 'preset'])}"
            )
        section = getattr(cfg, sections[key])
        typed = origin.startswith("file ")  # TOML's values are typed; flags are text
        setattr(section, key, convert_value(key, raw, field_type(key), origin, typed))
        cfg.given[key] = origin


def apply_preset(cfg: Config, name: str, origin: str = "python") -> None:
    """Set the fields a named preset holds: a model shape, or a whole recipe (a speedrun's)."""
    if name not in PRESETS:
        raise MyGPT2Error(
            f"unknown preset '{name}'.{closest(name, list(PRESETS))} Presets: {', '.join(PRESETS)}."
        )
    sections = field_sections()
    for key, value in PRESETS[name].items():
        setattr(getattr(cfg, sections[key]), key, value)
        cfg.given[key] = f"preset {name}" if origin in ("flag", "python") else origin


def merge_saved(saved: Config, cfg: Config) -> Config:
    """A resumed run's config: the checkpoint's settings, with the keys `cfg` was given on top.

    Keys of one invocation (`resume`, `stop_at`, `checkpoint`) are never inherited. Values taken
    from the checkpoint that differ from the defaults are marked as coming from it."""
    merged = Config.from_saved(saved.to_dict())
    defaults = Config()
    for key in field_sections():
        if key in cfg.given or key in PER_INVOCATION:
            setattr(getattr(merged, field_sections()[key]), key, cfg.get(key))
    merged.given = {k: "checkpoint" for k in field_sections() if merged.get(k) != defaults.get(k)}
    merged.given.update({k: v for k, v in cfg.given.items()})
    return merged


# The values each architecture knob of ModelConfig takes; the first is GPT-2's.
VARIANTS: dict[str, tuple[str, ...]] = {
    "norm": ("layernorm", "rmsnorm"),
    "pos_emb": ("learned", "rope", "none"),
    "mlp": ("gelu", "relu2", "swiglu"),
}
ARCHITECTURE_KNOBS = ("norm", "pos_emb", "mlp", "qk_norm", "tie_embeddings", "logit_softcap")


def check_variants(m: ModelConfig, warn: bool = True) -> None:
    """Refuse an unknown knob value (listing the valid ones) or a setting that cannot work;
    warn when only the causal mask is left to tell the model where a token stands."""
    for key, valid in VARIANTS.items():
        value = getattr(m, key)
        if value not in valid:
            hint = closest(value, list(valid)) if isinstance(value, str) else ""
            raise MyGPT2Error(f"{key} must be one of {', '.join(valid)}; got {value!r}.{hint}")
    if not m.logit_softcap >= 0:
        raise MyGPT2Error(f"logit_softcap must be 0 (off) or positive, got {m.logit_softcap}.")
    if m.pos_emb == "rope" and (m.n_emb // max(m.n_heads, 1)) % 2:
        raise MyGPT2Error(
            f"pos_emb rope rotates pairs of channels, so the head size n_emb / n_heads must be "
            f"even; it is {m.n_emb} / {m.n_heads} = {m.n_emb // max(m.n_heads, 1)}."
        )
    if m.pos_emb == "none" and warn:
        warnings.warn(
            "pos_emb none: the model gets no position information; only the causal mask tells "
            "it the order of the tokens.",
            stacklevel=3,
        )


def non_gpt2_knobs(m: ModelConfig) -> list[str]:
    """`knob=value` for each architecture knob set away from GPT-2's own choice."""
    gpt2 = ModelConfig()
    return [
        f"{k}={getattr(m, k)!r}" for k in ARCHITECTURE_KNOBS if getattr(m, k) != getattr(gpt2, k)
    ]


def shape_changes(saved: ModelConfig, now: ModelConfig) -> list[str]:
    """`key: saved -> now` for each model-shape field that differs (dropout may change)."""
    return [
        f"{f.name}: checkpoint {getattr(saved, f.name)!r}, given {getattr(now, f.name)!r}"
        for f in dataclasses.fields(ModelConfig)
        if f.name != "dropout" and getattr(saved, f.name) != getattr(now, f.name)
    ]


def validate(cfg: Config) -> None:
    """Reject impossible settings before any work starts."""
    m, r, t, d, s = cfg.model, cfg.run, cfg.train, cfg.data, cfg.sample
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
        (
            r.dtype in ("auto", "float32", "bfloat16", "float16"),
            f"dtype must be auto, float32, bfloat16 or float16, got '{r.dtype}'.",
        ),
        (t.batch_size >= 1, f"batch_size must be at least 1, got {t.batch_size}."),
        (
            t.macro_batch_size >= 1,
            f"macro_batch_size must be at least 1, got {t.macro_batch_size}.",
        ),
        (t.max_steps >= 1, f"max_steps must be at least 1, got {t.max_steps}."),
        (t.eval_interval >= 1, f"eval_interval must be at least 1, got {t.eval_interval}."),
        (t.eval_batches >= 1, f"eval_batches must be at least 1, got {t.eval_batches}."),
        (
            0 <= t.eval_stride <= m.T,
            f"eval_stride must be between 1 and T = {m.T} (0 means T), got {t.eval_stride}.",
        ),
        (t.val_batch_size >= 0, f"val_batch_size must be 0 or more, got {t.val_batch_size}."),
        (t.lr > 0, f"lr must be positive, got {t.lr}."),
        (0 <= t.min_lr <= t.lr, f"min_lr must be in [0, lr={t.lr}], got {t.min_lr}."),
        (0.0 <= t.warmup_ratio <= 1.0, f"warmup_ratio must be in [0, 1], got {t.warmup_ratio}."),
        (t.weight_decay >= 0, f"weight_decay must be 0 or more, got {t.weight_decay}."),
        (0.0 <= t.beta1 < 1.0, f"beta1 must be in [0, 1), got {t.beta1}."),
        (0.0 <= t.beta2 < 1.0, f"beta2 must be in [0, 1), got {t.beta2}."),
        (t.grad_clipping >= 0, f"grad_clipping must be 0 or more, got {t.grad_clipping}."),
        (
            t.optimizer in OPTIMIZERS,
            f"optimizer must be one of {', '.join(OPTIMIZERS)}, got '{t.optimizer}'.",
        ),
        (
            t.schedule in SCHEDULES,
            f"schedule must be one of {', '.join(SCHEDULES)}, got '{t.schedule}'.",
        ),
        (t.muon_lr > 0, f"muon_lr must be positive, got {t.muon_lr}."),
        (0.0 < t.momentum < 1.0, f"momentum must be in (0, 1), got {t.momentum}."),
        (0.0 <= t.decay_ratio <= 1.0, f"decay_ratio must be in [0, 1], got {t.decay_ratio}."),
        (
            t.schedule != "wsd" or t.warmup_ratio + t.decay_ratio <= 1.0,
            f"with schedule wsd, warmup_ratio ({t.warmup_ratio}) + decay_ratio "
            f"({t.decay_ratio}) must be at most 1: the decay would start before warmup ends.",
        ),
        (t.target_val_loss >= 0, f"target_val_loss must be 0 or more, got {t.target_val_loss}."),
        (t.stop_at >= 0, f"stop_at must be 0 or more, got {t.stop_at}."),
        (
            t.health_interval >= 0,
            f"health_interval must be 0 (off) or more, got {t.health_interval}.",
        ),
        (
            t.keep_checkpoints in ("none", "log", "all"),
            f"keep_checkpoints must be none, log or all, got '{t.keep_checkpoints}'.",
        ),
        (
            t.checkpoint_interval >= 0,
            f"checkpoint_interval must be 0 or more, got {t.checkpoint_interval}.",
        ),
        (
            t.checkpoint_minutes >= 0,
            f"checkpoint_minutes must be 0 or more, got {t.checkpoint_minutes}.",
        ),
        (0.0 < d.split < 1.0, f"split must be strictly between 0 and 1, got {d.split}."),
        (d.stdlib_max_mb > 0, f"stdlib_max_mb must be positive, got {d.stdlib_max_mb}."),
        (s.num_samples >= 1, f"num_samples must be at least 1, got {s.num_samples}."),
        (s.max_new_tokens >= 0, f"max_new_tokens must be 0 or more, got {s.max_new_tokens}."),
    ]
    for ok, message in checks:
        if not ok:
            raise MyGPT2Error(message)
    check_sampling(s.temperature, s.top_k, s.top_p)  # the one check generate and serve use
    check_variants(m)


def wants_gpt2_tokenizer(cfg: Config) -> bool:
    """Starting from Hugging Face weights, use GPT-2's tokenizer unless a tokenizer.json was
    named (and no tiktoken file): GPT-2's weights speak GPT-2's tokens, an exported mygpt2
    model may not."""
    tk = cfg.tokenizer
    gpt2 = tk.use_tiktoken or bool(tk.tiktoken_file) or "tokenizer_path" not in cfg.given
    return cfg.run.init_from != "scratch" and gpt2


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def format_config(cfg: Config, sections: tuple[str, ...] = SECTIONS) -> str:
    """The resolved config as TOML, printed at the start of a run; each value that is not the
    default says where it came from (`# flag`, `# file run.toml`, `# checkpoint`, ...)."""
    lines, defaults = [], Config()
    for section in sections:
        lines.append(f"[{section}]")
        for f in section_fields(section):
            value = getattr(getattr(cfg, section), f.name)
            line = f"{f.name} = {_toml_value(value)}"
            if value != getattr(getattr(defaults, section), f.name):
                line = f"{line:<40} # {cfg.given.get(f.name, 'derived')}"
            lines.append(line)
    return "\n".join(lines)


SECTION_TYPES: dict[str, type] = {
    "model": ModelConfig,
    "run": RunConfig,
    "train": TrainConfig,
    "data": DataConfig,
    "tokenizer": TokenizerConfig,
    "sample": SampleConfig,
}
