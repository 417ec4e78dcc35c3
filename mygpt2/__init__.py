"""mygpt2: a small, fast, readable GPT-2 toolkit.

The public face, in a few names (imported on first use, so `mygpt2 --help` stays fast):

    import mygpt2

    model = mygpt2.GPT(mygpt2.ModelConfig(n_layers=4, n_heads=4, n_emb=128))
    model = mygpt2.from_pretrained("gpt2")            # or a local Hugging Face directory
    mygpt2.save_pretrained(model, "export/")          # transformers reads it
    ids = mygpt2.generate(model, [464, 3290], max_new_tokens=20, seed=1)
    tok = mygpt2.RegexTokenizer("gpt4").train(text, vocab_size=4096)
    cfg = mygpt2.load_config(["--data", "corpus.txt", "--max_steps", "100"])
    summary = mygpt2.train(cfg)
    model, tok = mygpt2.load_model_and_tokenizer(cfg)

Modules, from the bottom up: `errors`, `fileio`, `config`, `runtime` (base); `bpe`,
`tokenizer`, `corpus`, `prepare`, `data`, `loss`, `model`, `generate`, `hf` (domain);
`checkpoint`, `optim`, `metrics`, `train`, `sample` (runs); `commands` and `cli` (the command
line). docs/ARCHITECTURE.md draws the layers.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_API = {
    "GPT": "mygpt2.model",
    "KVCache": "mygpt2.generate",
    "ModelConfig": "mygpt2.config",
    "Config": "mygpt2.config",
    "load_config": "mygpt2.commands.args",
    "from_pretrained": "mygpt2.hf",
    "save_pretrained": "mygpt2.hf",
    "save_safetensors": "mygpt2.hf",
    "generate": "mygpt2.generate",
    "generate_stream": "mygpt2.generate",
    "generation_weights": "mygpt2.generate",
    "RegexTokenizer": "mygpt2.tokenizer",
    "load_tokenizer": "mygpt2.tokenizer",
    "train": "mygpt2.train",
    "train_step": "mygpt2.train",
    "load_model_and_tokenizer": "mygpt2.checkpoint",
    "MyGPT2Error": "mygpt2.errors",
}

__all__ = [*_API, "__version__"]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'mygpt2' has no attribute '{name}'")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


class _Package(types.ModuleType):
    """`mygpt2.train` and `mygpt2.generate` are the API's functions, although modules of the
    same names exist: importing a submodule would otherwise rebind the package attribute to the
    module. The modules stay importable by their full names (`from mygpt2.train import ...`)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _API and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
