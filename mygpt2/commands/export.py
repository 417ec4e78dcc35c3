"""`mygpt2 export`: a checkpoint's weights as safetensors, and as a Hugging Face directory."""

from __future__ import annotations

from mygpt2.commands.args import Command, read_args

COMMAND = Command(
    name="export",
    usage="""usage: mygpt2 export [--out_dir DIR | --checkpoint FILE] [--hf EXPORT_DIR]

Writes model.safetensors beside the checkpoint; with --hf, also a directory that
transformers.GPT2LMHeadModel.from_pretrained loads (LlamaForCausalLM for the rope + rmsnorm +
swiglu variant; other variants are refused).""",
    sections={"run": ("out_dir", "checkpoint")},
    extra={"hf": "also write a Hugging Face directory here (GPT-2, or Llama for that variant)"},
)


def cli(argv: list[str]) -> None:
    args = read_args(argv, COMMAND)
    if args is None:
        return
    from mygpt2.checkpoint import checkpoint_path, load_checkpoint, model_from_checkpoint
    from mygpt2.hf import export_architecture, save_pretrained, save_safetensors

    path = checkpoint_path(args.config)
    model = model_from_checkpoint(load_checkpoint(path), path)
    target = path.parent / "model.safetensors"
    save_safetensors(model, target)
    print(f"wrote {target}")
    if "hf" in args.extras:
        save_pretrained(model, args.extras["hf"])
        kind = {"gpt2": "GPT-2", "llama": "Llama"}[export_architecture(model.config)]
        print(f"wrote {args.extras['hf']}/config.json and model.safetensors (Hugging Face {kind})")
