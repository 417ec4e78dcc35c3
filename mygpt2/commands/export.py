"""`mygpt2 export`: a checkpoint's weights as safetensors, and as a Hugging Face directory."""

from __future__ import annotations

from pathlib import Path

from mygpt2.errors import MyGPT2Error
from mygpt2.hf import save_pretrained, save_safetensors
from mygpt2.model import GPT


def cli(argv: list[str]) -> None:
    """`mygpt2 export`: a checkpoint's weights as model.safetensors, and/or a Hugging Face dir."""
    from mygpt2.checkpoint import load_checkpoint
    from mygpt2.config import Config, load_config

    if "-h" in argv or "--help" in argv:
        print(
            "usage: mygpt2 export [--out_dir DIR | --checkpoint FILE] [--hf EXPORT_DIR]\n\n"
            "Writes DIR/model.safetensors from DIR/checkpoint.pt; with --hf, also a directory\n"
            "that transformers.GPT2LMHeadModel.from_pretrained loads."
        )
        return
    cfg, extras, positional = load_config(argv, extra_flags=("hf",))
    if positional:
        raise MyGPT2Error(f"unexpected argument '{positional[0]}': flags look like --name value.")
    path = Path(cfg.sample.checkpoint or Path(cfg.train.out_dir) / "checkpoint.pt")
    ckpt = load_checkpoint(path)
    model = GPT(Config.from_saved(ckpt["config"]).model)
    model.load_state_dict(ckpt["model"])
    target = path.parent / "model.safetensors"
    save_safetensors(model, target)
    print(f"wrote {target}")
    if "hf" in extras:
        save_pretrained(model, extras["hf"])
        print(f"wrote {extras['hf']}/config.json and model.safetensors (Hugging Face GPT-2)")
