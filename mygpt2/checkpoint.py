"""Checkpoints that never lose a run and never run code.

A checkpoint is one `torch.save` dict: model and optimizer state, grad scaler, the resolved
config, step, data-loader position, every RNG state, tokenizer identity, and the metrics
history. It holds only tensors and plain Python values, so it loads with
`torch.load(weights_only=True)`: a checkpoint file can never execute code.

Writes are atomic: the dict goes to a temporary file in the same directory, is flushed to disk,
and then renamed over `checkpoint.pt`. A crash, a kill or a full disk at any moment leaves the
previous checkpoint whole.
"""

from __future__ import annotations

import dataclasses
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mygpt2.config import Config, TokenizerConfig, merge_saved, shape_changes, wants_gpt2_tokenizer
from mygpt2.errors import MyGPT2Error
from mygpt2.fileio import atomic_write, load_torch_file
from mygpt2.hf import from_pretrained
from mygpt2.model import GPT
from mygpt2.tokenizer import RegexTokenizer, load_tokenizer

FORMAT_VERSION = 1


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write `state` (plus the format version) atomically to `path`."""
    state = {"format_version": FORMAT_VERSION, **state}
    atomic_write(path, lambda fh: torch.save(state, fh))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint safely (`weights_only=True`), with clear errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise MyGPT2Error(
            f"no checkpoint at '{path}'. Train one first (mygpt2 train / python run_train.py, "
            "which writes out_dir/checkpoint.pt), or point to one with --out_dir or --checkpoint."
        )
    state = load_torch_file(path, "checkpoint")
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise MyGPT2Error(f"'{path}' is not a mygpt2 checkpoint (no model or config inside).")
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise MyGPT2Error(
            f"'{path}' was written by a newer mygpt2 (format {state['format_version']}); "
            "upgrade mygpt2 to read it."
        )
    return state


def rng_state() -> dict[str, Any]:
    """Every RNG state a run depends on, in weights_only-loadable form."""
    np_state = np.random.get_state(legacy=False)
    np_state["state"] = {
        k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in np_state["state"].items()
    }
    state = {"python": random.getstate(), "numpy": np_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = dict(state["numpy"])
    np_state["state"] = {
        k: (np.array(v, dtype=np.uint32) if isinstance(v, list) else v)
        for k, v in np_state["state"].items()
    }
    np.random.set_state(np_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_path(cfg: Config) -> Path:
    """The checkpoint a command reads: `checkpoint`, or `out_dir/checkpoint.pt`."""
    return Path(cfg.run.checkpoint or Path(cfg.run.out_dir) / "checkpoint.pt")


def check_tokenizer(ckpt: dict[str, Any], tok: RegexTokenizer, path: str | os.PathLike) -> None:
    """Refuse a tokenizer other than the one the checkpoint was trained with."""
    saved = ckpt.get("tokenizer", {})
    if saved.get("fingerprint") and saved["fingerprint"] != tok.fingerprint():
        now = (
            "that file now holds another tokenizer"
            if saved.get("name") == tok.name
            else f"this run's tokenizer is {tok.name}"
        )
        raise MyGPT2Error(
            f"'{path}' was trained with tokenizer {saved.get('name')} (fingerprint "
            f"{saved['fingerprint'][:12]}), but {now} (fingerprint {tok.fingerprint()[:12]}). "
            "Pass the tokenizer it was trained with via --tokenizer_path."
        )


def model_from_checkpoint(ckpt: dict[str, Any], path: str | os.PathLike = "checkpoint") -> GPT:
    """The GPT a loaded checkpoint holds (its config, its weights)."""
    model = GPT(Config.from_saved(ckpt["config"]).model)
    expected = model.state_dict()
    weights = ckpt["model"]
    problems = [f"missing {k}" for k in expected if k not in weights]
    problems += [f"unexpected {k}" for k in weights if k not in expected]
    problems += [
        f"{k} has shape {tuple(v.shape)}, its config needs {tuple(expected[k].shape)}"
        for k, v in weights.items()
        if k in expected and hasattr(v, "shape") and v.shape != expected[k].shape
    ]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise MyGPT2Error(
            f"'{path}' does not match the model its config describes: "
            f"{'; '.join(problems[:3])}{more}. The file is damaged or was edited."
        )
    model.load_state_dict(weights)
    return model


def resume_config(ckpt: dict[str, Any], cfg: Config, path: str | os.PathLike) -> Config:
    """The checkpoint's config with the given keys on top; a given change of shape is refused."""
    saved = Config.from_saved(ckpt["config"])
    merged = merge_saved(saved, cfg)
    diff = shape_changes(saved.model, merged.model)
    if diff:
        raise MyGPT2Error(
            f"cannot resume from '{path}': the model's shape would change ({'; '.join(diff)}). "
            "Drop those flags to continue the run, or start a new run in another --out_dir."
        )
    return merged


def resumed_model(ckpt: dict[str, Any], tok: RegexTokenizer, path: str | os.PathLike) -> GPT:
    """The checkpoint's weights, after checking they were trained with this tokenizer."""
    check_tokenizer(ckpt, tok, path)
    return model_from_checkpoint(ckpt, path)


def load_model_and_tokenizer(cfg: Config) -> tuple[GPT, RegexTokenizer]:
    """The weights a command reads, with the tokenizer they speak, on the CPU in float32, in
    eval mode: a model trained with dropout gives the same logits and hook values at every
    call (`model.train()` to train it further).

    `init_from` other than `scratch`: GPT-2 weights (a hub name or a local Hugging Face
    directory) with GPT-2's tokenizer, unless a tokenizer file is given. Otherwise the checkpoint
    `checkpoint` (default `out_dir/checkpoint.pt`) with the tokenizer it was trained with; given
    tokenizer flags point elsewhere, and must still match the checkpoint's fingerprint."""
    if cfg.run.init_from != "scratch":
        model = from_pretrained(cfg.run.init_from)
        tok_cfg = dataclasses.replace(cfg.tokenizer, use_tiktoken=wants_gpt2_tokenizer(cfg))
        return model.eval(), load_tokenizer(tok_cfg)
    path = checkpoint_path(cfg)
    ckpt = load_checkpoint(path)
    saved = Config.from_saved(ckpt["config"]).tokenizer
    given = {k: getattr(cfg.tokenizer, k) for k in vars(saved) if k in cfg.given}
    tok_cfg = TokenizerConfig(**{**vars(saved), **given})
    try:
        tok = load_tokenizer(tok_cfg)
    except MyGPT2Error as e:
        raise MyGPT2Error(
            f"the checkpoint '{path}' was trained with tokenizer "
            f"{ckpt.get('tokenizer', {}).get('name', '?')}, which cannot be loaded: {e} "
            "Pass the right file with --tokenizer_path."
        ) from None
    check_tokenizer(ckpt, tok, path)
    return model_from_checkpoint(ckpt, path).eval(), tok
