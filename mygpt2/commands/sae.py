"""`mygpt2 sae train|eval`: sparse autoencoders on a model's hook points.

`train` streams activations of one hook point from the model (`--out_dir`/`--checkpoint`/
`--init_from`, as every command reads a model) over `--data`'s training tokens and trains an
SAE into `--sae_dir` (`mygpt2.sae_train`). `eval` measures an SAE on `--data`'s validation
tokens (`mygpt2.sae.measure`), prints the figures and writes them with `--json`. Flags of the
SAE's shape and the run are this command's own; model, data, tokenizer, seed, --resume and
--stop_at are the config flags of the other commands.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
from pathlib import Path
from typing import Any

from mygpt2.commands.args import Command, read_args
from mygpt2.errors import MyGPT2Error, UsageError

ACTIONS = ("train", "eval")
COMMAND = Command(
    name="sae",
    usage="""usage: mygpt2 sae train --hook NAME --d_sae N [--architecture topk|standard] [--k K] [--FLAG VALUE ...]
       mygpt2 sae eval --sae_dir DIR [--data SRC] [--json PATH]

Sparse autoencoders (SAEs) on any per-token hook point of a model (--out_dir, --checkpoint, or
GPT-2 weights with --init_from), written in SAELens's format (cfg.json +
sae_weights.safetensors: sae_lens.SAE.load_from_disk reads it, mygpt2.sae.load reads SAELens's).
  train  stream the hook's activations over --data's training tokens (no dump on disk) and train
         an SAE of --d_sae features into --sae_dir: topk (--k features per token, the default)
         or standard (ReLU, --l1_coefficient). A run like training: progress bar,
         metrics.jsonl, loss_plot.png, checkpoints, SIGINT/SIGTERM save, --resume.
  eval   on --data's validation tokens: L0, MSE, explained variance, dead fraction, and the
         model's loss clean, with the reconstruction spliced in, zero- and mean-ablated: loss
         delta and CE loss recovered. docs/SAE.md defines each figure.
Example: mygpt2 sae train --out_dir out-demo --data stdlib --hook blocks.1.hook_resid_post \\
             --d_sae 1024 --k 32 --tokens 2_000_000 --sae_dir sae-demo""",
    sections={
        "run": ("out_dir", "checkpoint", "init_from", "device", "seed", "overwrite", "break_lock"),
        "train": ("resume", "stop_at"),
        "data": ("data", "data_dir", "split", "stdlib_max_mb", "strict_utf8", "cache_dir"),
        "tokenizer": ("use_tiktoken", "tokenizer_path", "tiktoken_file"),
    },
    extra={
        "sae_dir": "the SAE's directory (train: written; eval: read)",
        "hook": "train: the hook point, e.g. blocks.0.hook_resid_post (see model.hook_names())",
        "d_sae": "train: features of the SAE",
        "architecture": "train: topk (default) or standard",
        "k": "train, topk: features kept per token (default 32)",
        "l1_coefficient": "train, standard: weight of the L1 penalty (default 1.0)",
        "tokens": "train: activation tokens to train on (default 1_000_000); eval: tokens to "
        "measure on (default 65_536)",
        "batch_size": "train: activation rows per step (default 4096); eval: windows per forward "
        "(default 8)",
        "lr": "train: Adam's learning rate (default 1e-3)",
        "context": "tokens per window (default: the model's T; eval: the SAE's context_size)",
        "model_batch": "train: windows per model forward (default 8)",
        "buffer_tokens": "train: activation rows shuffled together (default 32768)",
        "dead_window": "train: tokens without firing after which a feature counts as dead and "
        "gets the AuxK loss (default 100_000)",
        "checkpoint_every": "train: steps between checkpoints (default 500; and at the end)",
        "json": "eval: write the figures to this JSON file",
    },
)
TRAIN_ONLY = ("hook", "d_sae", "architecture", "k", "l1_coefficient", "lr", "model_batch")
TRAIN_ONLY += ("buffer_tokens", "dead_window", "checkpoint_every")
INTS = ("d_sae", "k", "tokens", "batch_size", "context", "model_batch", "buffer_tokens")
INTS += ("dead_window", "checkpoint_every")


def cli(argv: list[str]) -> int:
    args = read_args(argv, COMMAND, positional=True)
    if args is None:
        return 0
    if len(args.positional) != 1 or args.positional[0] not in ACTIONS:
        got = f" (got {' '.join(args.positional)!r})" if args.positional else ""
        raise UsageError(f"say what to do: mygpt2 sae train|eval{got}; see mygpt2 sae --help.")
    action, extras = args.positional[0], args.extras
    if "sae_dir" not in extras:
        raise UsageError(f"mygpt2 sae {action} needs --sae_dir DIR.")
    if action == "eval":
        wrong = [f for f in TRAIN_ONLY if f in extras] + [
            k for k in ("resume", "stop_at", "overwrite") if k in args.config.given
        ]
        if wrong:
            raise UsageError(f"--{wrong[0]} is for mygpt2 sae train, not eval.")
        return evaluate(args.config, extras)
    if "json" in extras:
        raise UsageError("--json is for mygpt2 sae eval, not train.")
    return train(args.config, extras, argv)


def _number(extras: dict[str, str], name: str, default: Any) -> Any:
    if name not in extras:
        return default
    text = extras[name].replace("_", "")
    try:
        value = int(text) if name in INTS else float(text)
    except ValueError:
        kind = "an integer" if name in INTS else "a number"
        raise UsageError(f"--{name} must be {kind}, got {extras[name]!r}.") from None
    if name in INTS and value < (0 if name == "context" else 1):
        raise UsageError(f"--{name} must be at least 1, got {value}.")
    if name not in INTS and not math.isfinite(value):
        raise UsageError(f"--{name} must be a finite number, got {extras[name]!r}.")
    return value


def settings(cfg: Any, extras: dict[str, str]) -> tuple[Any, set[str]]:
    """The run's Settings from the flags, and which of them were given."""
    from mygpt2.sae_train import Settings, read_run, refuse_overwrite

    if cfg.train.resume:  # the run's own settings, then the flags given now
        directory = Path(extras["sae_dir"])
        refuse_overwrite(directory, resume=True, overwrite=False)
        s = Settings(**read_run(directory)["settings"])
    elif "hook" not in extras or "d_sae" not in extras:
        raise UsageError("mygpt2 sae train needs --hook NAME and --d_sae N.")
    else:
        s = Settings(hook=extras["hook"], d_sae=_number(extras, "d_sae", 0))
        s.seed = cfg.run.seed
    s.hook = extras.get("hook", s.hook)
    s.d_sae = _number(extras, "d_sae", s.d_sae)
    s.architecture = extras.get("architecture", s.architecture)
    for name in ("k", "l1_coefficient", "tokens", "batch_size", "lr", "context", "model_batch"):
        setattr(s, name, _number(extras, name, getattr(s, name)))
    for name in ("buffer_tokens", "dead_window", "checkpoint_every"):
        setattr(s, name, _number(extras, name, getattr(s, name)))
    if "seed" in cfg.given:
        s.seed = cfg.run.seed
    try:
        s.check()
    except MyGPT2Error as e:
        raise UsageError(str(e)) from None
    if "k" in extras and s.architecture != "topk":
        raise UsageError("--k is for --architecture topk; standard uses --l1_coefficient.")
    if "l1_coefficient" in extras and s.architecture != "standard":
        raise UsageError("--l1_coefficient is for --architecture standard; topk uses --k.")
    given = {k for k in extras if hasattr(s, k)} | ({"seed"} if "seed" in cfg.given else set())
    return s, given


def _load(cfg: Any):
    from mygpt2.checkpoint import load_model_and_tokenizer
    from mygpt2.runtime import pick_device

    model, tok = load_model_and_tokenizer(cfg)
    return model.to(pick_device(cfg.run.device)).eval(), tok


def train(cfg: Any, extras: dict[str, str], argv: list[str]) -> int:
    s, given = settings(cfg, extras)
    from mygpt2.guard import resolve_input_paths, without_flags
    from mygpt2.prepare import ensure_prepared
    from mygpt2.sae.splice import check_hook_name
    from mygpt2.sae_train import model_source, train_sae

    resolve_input_paths(cfg)
    model, tok = _load(cfg)
    check_hook_name(model, s.hook)  # before the data is prepared
    train_tokens, _, _ = ensure_prepared(cfg, tok, progress=sys.stderr.isatty())
    words = without_flags(argv, ("resume", "overwrite", "stop_at", "break_lock"))
    summary = train_sae(
        model,
        train_tokens,
        s,
        extras["sae_dir"],
        source=model_source(cfg, model, tok),
        resume=cfg.train.resume,
        overwrite=cfg.run.overwrite,
        break_lock=cfg.run.break_lock,
        stop_at=cfg.train.stop_at,
        given=given,
        resume_line="mygpt2 sae " + shlex.join([*words, "--resume"]),
        command="mygpt2 sae " + shlex.join(argv),
        progress=sys.stderr.isatty(),
    )
    return 128 + summary["signal"] if summary["signal"] else 0


ROWS = (
    ("l0", "L0 (features per token)"),
    ("explained_variance", "explained variance"),
    ("mse", "MSE (per element)"),
    ("dead_fraction", "dead fraction"),
    ("loss_clean", "loss, clean"),
    ("loss_spliced", "loss, SAE spliced in"),
    ("loss_delta", "loss delta (spliced - clean)"),
    ("loss_zero_ablated", "loss, zero-ablated"),
    ("loss_mean_ablated", "loss, mean-ablated"),
    ("ce_loss_recovered_zero", "CE loss recovered (zero ablation)"),
    ("ce_loss_recovered_mean", "CE loss recovered (mean ablation)"),
)


def evaluate(cfg: Any, extras: dict[str, str]) -> int:
    import numpy as np
    import torch

    from mygpt2.fileio import atomic_write
    from mygpt2.guard import resolve_input_paths
    from mygpt2.prepare import ensure_prepared
    from mygpt2.sae import check_fits, load
    from mygpt2.sae.measure import evaluate as measure

    tokens = _number(extras, "tokens", 65_536)
    batch = _number(extras, "batch_size", 8)
    sae = load(extras["sae_dir"])
    resolve_input_paths(cfg)
    model, tok = _load(cfg)
    check_fits(model, sae)  # before the data is prepared
    context = _number(extras, "context", 0) or min(sae.cfg.context_size or 10**9, model.config.T)
    if context > model.config.T:
        raise UsageError(f"--context {context} is longer than the model's T={model.config.T}.")
    _, val, _ = ensure_prepared(cfg, tok, progress=sys.stderr.isatty())
    n = min(len(val), tokens) // context
    if n < 1:
        raise MyGPT2Error(
            f"the validation tokens ({len(val)}) hold no window of {context}; use more text or a "
            "smaller --context."
        )
    device = model.transformer.wte.weight.device
    sae = sae.to(device)
    windows = torch.from_numpy(np.asarray(val[: n * context], dtype=np.int64)).view(n, context)
    batches = [windows[i : i + batch].to(device) for i in range(0, n, batch)]
    result = measure(model, sae, batches).as_dict()
    result |= {
        "sae_dir": extras["sae_dir"],
        "hook": sae.cfg.hook_name,
        "context": context,
        "architecture": sae.cfg.architecture,
        "d_in": sae.cfg.d_in,
        "d_sae": sae.cfg.d_sae,
    }
    print(
        f"SAE {extras['sae_dir']}: {sae.cfg.architecture}, d_sae {sae.cfg.d_sae} at "
        f"{sae.cfg.hook_name}; {result['tokens']:,} validation tokens of {cfg.data.data}"
    )
    for key, label in ROWS:
        print(f"  {label:<36} {result[key]:.6g}")
    if "json" in extras:
        text = json.dumps(result, indent=2) + "\n"
        atomic_write(extras["json"], lambda fh: fh.write(text.encode("utf-8")))
    return 0
