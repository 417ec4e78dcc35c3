"""`mygpt2 export`: a checkpoint's weights as safetensors, and as a Hugging Face directory.

The Hugging Face directory holds the tokenizer too (`tokenizer.json`, `tokenizer_config.json`),
so `AutoTokenizer.from_pretrained` and lm-evaluation-harness's `--model hf` read it whole; the
tokenizer is the one the checkpoint was trained with (fingerprint checked, as `mygpt2 sample`
does), or the one the tokenizer flags name. Without it there is no `--hf` export: a model
directory whose tokenizer is missing or wrong gives wrong numbers without a word.
"""

from __future__ import annotations

from mygpt2.commands.args import Command, read_args

COMMAND = Command(
    name="export",
    usage="""usage: mygpt2 export [--out_dir DIR | --checkpoint FILE] [--hf EXPORT_DIR]

Writes model.safetensors beside the checkpoint; with --hf, also a directory that
transformers.GPT2LMHeadModel.from_pretrained loads (LlamaForCausalLM for the rope + rmsnorm +
swiglu variant; other variants are refused), with the model's tokenizer for AutoTokenizer.""",
    sections={
        "run": ("out_dir", "checkpoint"),
        "tokenizer": ("use_tiktoken", "tokenizer_path", "tiktoken_file"),
    },
    extra={"hf": "also write a Hugging Face directory here (GPT-2, or Llama for that variant)"},
)


def cli(argv: list[str]) -> None:
    args = read_args(argv, COMMAND)
    if args is None:
        return
    from mygpt2.checkpoint import (
        checkpoint_path,
        load_checkpoint,
        load_model_and_tokenizer,
        model_from_checkpoint,
    )
    from mygpt2.hf import export_architecture, save_pretrained, save_safetensors

    path = checkpoint_path(args.config)
    tok = None
    if "hf" in args.extras:  # the tokenizer is part of a Hugging Face export: load it first
        model, tok = load_model_and_tokenizer(args.config)
        export_architecture(model.config)  # a variant without one is refused: nothing written
    else:
        model = model_from_checkpoint(load_checkpoint(path), path)
    target = path.parent / "model.safetensors"
    save_safetensors(model, target)
    print(f"wrote {target}")
    if tok is not None:
        out = args.extras["hf"]
        save_pretrained(model, out, tokenizer=tok)
        kind = {"gpt2": "GPT-2", "llama": "Llama"}[export_architecture(model.config)]
        print(
            f"wrote {out}/config.json, model.safetensors (Hugging Face {kind}), tokenizer.json "
            "and tokenizer_config.json"
        )
