r"""GPT-2 weights in and out: Hugging Face checkpoints and safetensors files.

Our parameter names and layouts are GPT-2's own (projections stored (in, out), as HF's `Conv1D`),
so a Hugging Face `GPT2LMHeadModel` state dict maps onto ours key for key, tensor for tensor,
and ours -> HF -> ours is bitwise equal.

Export: a model with GPT-2's architecture knobs goes out as `GPT2LMHeadModel`. The one variant
that is exactly a Llama -- rope + rmsnorm + swiglu, no qk_norm, no softcap, tied or not, biases
or not -- goes out as `LlamaForCausalLM` (q, k, v, gate and up split out of our fused matrices,
transposed to (out, in)). Any other variant is refused with the knobs that stand in the way.

With the tokenizer the model speaks, the export also holds `tokenizer.json` (our own file:
the Hugging Face `tokenizers` schema already) and `tokenizer_config.json`, so that
`AutoTokenizer.from_pretrained(EXPORT)` gives our ids. Two things make that true:
- `tokenizer_config.json` names `PreTrainedTokenizerFast`. Without it, transformers 5 sees
  model_type gpt2 and builds `GPT2Tokenizer`, which replaces the split regex with GPT-2's own;
  for a tokenizer trained with another pattern (our default is GPT-4's) the ids differ.
- the split regex is rewritten for Oniguruma, the regex engine of `tokenizers`: there a
  possessive interval `X{1,3}+` means "(X{1,3}) one or more times", so GPT-4's
  `\p{N}{1,3}+` would keep a run of digits whole. The atomic group `(?>X{1,3})` means in
  both engines what the possessive interval means in ours (`onig_pattern`).
`<|endoftext|>` is bos, eos (and in config.json bos/eos_token_id), as in GPT-2's files.

Loading never runs code from a file: safetensors first, else `torch.load(weights_only=True)`.
`transformers` is not needed to load or save; `huggingface_hub` is needed only to fetch hub
names (`gpt2`, `gpt2-medium`, ...) when a local directory is not given.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from mygpt2.config import ModelConfig, non_gpt2_knobs
from mygpt2.errors import MyGPT2Error
from mygpt2.fileio import atomic_write, load_torch_file
from mygpt2.model import GPT, Linear, mlp_width
from mygpt2.tokenizer import RegexTokenizer
from mygpt2.tokenizer_files import EOT

HUB_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
# what our architecture assumes; a config.json that says otherwise is not a model we can run
SUPPORTED = {
    "activation_function": ("gelu_new", "gelu_pytorch_tanh"),
    "scale_attn_weights": (True,),
    "scale_attn_by_inverse_layer_idx": (False,),
    "reorder_and_upcast_attn": (False,),
    "tie_word_embeddings": (True,),  # GPT-2 ties its output head to the token embedding
    "layer_norm_epsilon": (1e-5,),  # nn.LayerNorm's default, as GPT-2
}


def _resolve_dir(name_or_dir: str) -> Path:
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        return path
    if name_or_dir in HUB_NAMES:
        try:
            from huggingface_hub import snapshot_download
        except ImportError:
            raise MyGPT2Error(
                f"loading '{name_or_dir}' by name needs huggingface_hub: "
                "pip install 'mygpt2[hf]', or pass a local directory with config.json "
                "and model.safetensors."
            ) from None
        try:
            return Path(
                snapshot_download(name_or_dir, allow_patterns=["config.json", "model.safetensors"])
            )
        except Exception as e:
            raise MyGPT2Error(
                f"could not fetch '{name_or_dir}' from the Hugging Face hub ({type(e).__name__}: "
                f"{e}). Offline, download it elsewhere and pass the local directory instead."
            ) from None
    raise MyGPT2Error(
        f"'{name_or_dir}' is neither a directory nor a GPT-2 hub name ({', '.join(HUB_NAMES)})."
    )


def read_hf_config(directory: Path) -> ModelConfig:
    """Our ModelConfig from a Hugging Face GPT-2 `config.json`, refusing other architectures."""
    path = directory / "config.json"
    if not path.is_file():
        raise MyGPT2Error(f"'{directory}' has no config.json: not a Hugging Face model directory.")
    try:
        hf = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise MyGPT2Error(f"'{path}' is not valid JSON: {e}") from None
    if hf.get("model_type") != "gpt2":
        raise MyGPT2Error(
            f"'{path}' describes a '{hf.get('model_type')}' model; only GPT-2 (model_type "
            "'gpt2') checkpoints can be loaded."
        )
    for key, allowed in SUPPORTED.items():
        if key in hf and hf[key] not in allowed:
            raise MyGPT2Error(
                f"'{path}' sets {key}={hf[key]!r}; mygpt2's GPT-2 supports {allowed[0]!r} only."
            )
    missing = [
        k for k in ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size") if k not in hf
    ]
    if missing:
        raise MyGPT2Error(f"'{path}' lacks the GPT-2 key(s) {', '.join(missing)}.")
    return ModelConfig(
        n_layers=hf["n_layer"],
        n_heads=hf["n_head"],
        n_emb=hf["n_embd"],
        T=hf["n_positions"],
        vocab_size=hf["vocab_size"],
        dropout=0.0,
        bias=True,
    )


def _read_weights(directory: Path) -> dict[str, torch.Tensor]:
    st, binf = directory / "model.safetensors", directory / "pytorch_model.bin"
    try:
        if st.is_file():
            return load_file(str(st))
        if binf.is_file():
            return load_torch_file(binf, "weights file")
    except MyGPT2Error:
        raise
    except Exception as e:
        bad = st if st.is_file() else binf
        raise MyGPT2Error(f"could not read weights from '{bad}': {e}") from None
    raise MyGPT2Error(
        f"'{directory}' has no model.safetensors or pytorch_model.bin: nothing to load."
    )


def from_pretrained(name_or_dir: str, dtype: torch.dtype = torch.float32) -> GPT:
    """Build a GPT from a Hugging Face GPT-2 checkpoint (local directory or hub name)."""
    directory = _resolve_dir(name_or_dir)
    model = GPT(read_hf_config(directory))
    hf_sd = _read_weights(directory)
    # checkpoints saved from GPT2LMHeadModel prefix "transformer."; those from GPT2Model do not
    hf_sd = {
        k if k.startswith(("transformer.", "lm_head.")) else f"transformer.{k}": v
        for k, v in hf_sd.items()
    }
    ours = model.state_dict()
    for key, target in ours.items():
        if key == "lm_head.weight":
            continue  # tied to transformer.wte.weight
        if key not in hf_sd:
            raise MyGPT2Error(f"'{directory}' is missing the tensor '{key}'.")
        src = hf_sd[key]
        if src.shape != target.shape:
            raise MyGPT2Error(
                f"tensor '{key}' in '{directory}' has shape {tuple(src.shape)}, but config.json "
                f"implies {tuple(target.shape)}."
            )
        with torch.no_grad():
            target.copy_(src)
    return model.to(dtype)


# what LlamaForCausalLM computes; the other two knobs (tie_embeddings, bias) map either way
LLAMA_KNOBS = {"norm": "rmsnorm", "pos_emb": "rope", "mlp": "swiglu", "qk_norm": False}


def export_architecture(cfg: ModelConfig) -> str:
    """`gpt2` or `llama`: the Hugging Face architecture that computes exactly what `cfg` does;
    a variant that has none is refused, naming the knobs that stand in the way."""
    gpt2_off = non_gpt2_knobs(cfg)
    if not gpt2_off:
        return "gpt2"
    llama_off = [f"{k}={getattr(cfg, k)!r}" for k, v in LLAMA_KNOBS.items() if getattr(cfg, k) != v]
    if cfg.logit_softcap:
        llama_off.append(f"logit_softcap={cfg.logit_softcap!r}")
    if not llama_off:
        return "llama"
    raise MyGPT2Error(
        f"this model sets {', '.join(gpt2_off)}, so it is not a GPT-2, and Hugging Face's "
        f"GPT2LMHeadModel would compute something else; it is not a Llama either "
        f"({', '.join(llama_off)}; Llama is rope + rmsnorm + swiglu without qk_norm or "
        "softcap). `mygpt2 export` without --hf keeps its weights in mygpt2's own "
        "model.safetensors."
    )


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Our weights under Hugging Face GPT2LMHeadModel (or, for the Llama variant,
    LlamaForCausalLM) names and layouts. With `pad_vocab`, the embedding's and head's real
    rows only: the padding is no part of the model's distribution (`GPT.head`), so the
    exported model computes the same logits over the same `vocab_size` ids."""
    if export_architecture(model.config) == "llama":
        return llama_state_dict(model)
    out = {}
    for key, value in real_vocab_rows(model).items():
        if key == "lm_head.weight":
            continue  # HF ties it to transformer.wte.weight as we do
        out[key] = value.contiguous().clone()
    if not model.config.bias:  # HF GPT-2 always has biases: zeros are equivalent
        for name, module in model.named_modules():
            if isinstance(module, (Linear, torch.nn.LayerNorm)):
                width = module.weight.shape[-1]  # (in, out) or (n_emb,)
                out.setdefault(f"{name}.bias", torch.zeros(width, dtype=module.weight.dtype))
    return out


def real_vocab_rows(model: GPT) -> dict[str, torch.Tensor]:
    """`model`'s state dict with the token embedding and output head cut to the real
    vocabulary's rows (`pad_vocab` adds rows up to a multiple of 64)."""
    V = model.config.vocab_size
    sd = model.state_dict()
    for key in ("transformer.wte.weight", "lm_head.weight"):
        sd[key] = sd[key][:V]
    return sd


def llama_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """The Llama variant's weights under LlamaForCausalLM's names, matrices (out, in)."""
    cfg, C, hidden = model.config, model.config.n_emb, mlp_width(model.config)
    sd = real_vocab_rows(model)
    out = {
        "model.embed_tokens.weight": sd["transformer.wte.weight"],
        "model.norm.weight": sd["transformer.ln_f.weight"],
    }
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    # our fused (in, out) matrices, split along their output axis into Llama's projections
    parts = {
        "attn.c_attn": {"self_attn.q_proj": C, "self_attn.k_proj": C, "self_attn.v_proj": C},
        "attn.c_proj": {"self_attn.o_proj": C},
        "mlp.c_fc": {"mlp.gate_proj": hidden, "mlp.up_proj": hidden},
        "mlp.c_proj": {"mlp.down_proj": C},
    }
    for i in range(cfg.n_layers):
        ours, theirs = f"transformer.h.{i}.", f"model.layers.{i}."
        out[theirs + "input_layernorm.weight"] = sd[ours + "ln_1.weight"]
        out[theirs + "post_attention_layernorm.weight"] = sd[ours + "ln_2.weight"]
        for name, split in parts.items():
            widths = list(split.values())
            matrices = sd[ours + name + ".weight"].split(widths, dim=1)
            for part, w in zip(split, matrices, strict=True):
                out[theirs + part + ".weight"] = w.t()
            if cfg.bias:
                for part, b in zip(split, sd[ours + name + ".bias"].split(widths), strict=True):
                    out[theirs + part + ".bias"] = b
    return {k: v.contiguous().clone() for k, v in out.items()}


def gpt2_config(cfg: ModelConfig) -> dict:
    """Hugging Face GPT2Config keys for `cfg`."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "n_layer": cfg.n_layers,
        "n_head": cfg.n_heads,
        "n_embd": cfg.n_emb,
        "n_positions": cfg.T,
        "n_ctx": cfg.T,
        "vocab_size": cfg.vocab_size,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "tie_word_embeddings": True,
        "bos_token_id": cfg.vocab_size - 1,
        "eos_token_id": cfg.vocab_size - 1,
    }


def llama_config(cfg: ModelConfig) -> dict:
    """Hugging Face LlamaConfig keys for the Llama variant of `cfg` (eps and rope base ours)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_heads,
        "hidden_size": cfg.n_emb,
        "head_dim": cfg.n_emb // cfg.n_heads,
        "intermediate_size": mlp_width(cfg),
        "max_position_embeddings": cfg.T,
        "vocab_size": cfg.vocab_size,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,  # transformers 4.x; 5.x reads rope_parameters
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        "attention_bias": cfg.bias,
        "mlp_bias": cfg.bias,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": cfg.vocab_size - 1,
        "eos_token_id": cfg.vocab_size - 1,
    }


# a possessive interval quantifier: {n}+, {n,}+ or {n,m}+
_POSSESSIVE_INTERVAL = re.compile(r"\{\d+(?:,\d*)?\}\+")
# the opening of a group: (, (?:, (?i:, (?=, (?!, (?<=, (?<!, (?>, (?P<name>, (?<name>
_GROUP_OPEN = re.compile(r"\((?:\?(?:[a-zA-Z-]*:|=|!|<=|<!|>|P?<\w+>))?")


def _class_end(pattern: str, i: int) -> int:
    """The index just past the character class that opens at pattern[i] ('[')."""
    j = i + 1
    j += pattern.startswith("^", j)
    j += pattern.startswith("]", j)  # a ']' right after '[' or '[^' is a literal
    while pattern[j] != "]":
        j += 2 if pattern[j] == "\\" else 1
    return j + 1


def _escape_end(pattern: str, i: int) -> int:
    """The index just past the escape that starts at pattern[i] ('\\'): \\p{L}, \\x{41}, \\s."""
    if pattern[i + 1] in "pPxu" and pattern.startswith("{", i + 2):
        return pattern.index("}", i) + 1
    return i + 2


def onig_pattern(pattern: str) -> str:
    """`pattern` as Oniguruma (Hugging Face `tokenizers`) must read it to split text as
    `regex`/tiktoken do: each possessive interval `X{n,m}+` becomes the atomic group
    `(?>X{n,m})`. Examples: `\\p{N}{1,3}+` -> `(?>\\p{N}{1,3})`; `\\p{L}++` stays (Oniguruma
    reads `++`, `*+` and `?+` as possessive already)."""
    out: list[str] = []  # pieces of the rewritten pattern
    opened: list[int] = []  # where in `out` each open group starts
    atom: int | None = None  # where in `out` the last atom starts (what a quantifier repeats)
    i = 0
    while i < len(pattern):
        quantifier = _POSSESSIVE_INTERVAL.match(pattern, i)
        if quantifier and atom is not None:
            repeated = "".join(out[atom:])
            del out[atom:]
            out.append(f"(?>{repeated}{quantifier.group()[:-1]})")
            i, atom = quantifier.end(), None
            continue
        c = pattern[i]
        if c == "(":
            group = _GROUP_OPEN.match(pattern, i)
            j = group.end() if group else i + 1
            opened.append(len(out))
            out.append(pattern[i:j])
            i, atom = j, None
            continue
        if c == ")" and opened:
            atom = opened.pop()
            out.append(c)
            i += 1
            continue
        if c == "\\":
            j = _escape_end(pattern, i)
        elif c == "[":
            j = _class_end(pattern, i)
        else:
            j = i + 1
        out.append(pattern[i:j])
        atom = None if c in "|^$*+?{" else len(out) - 1
        i = j
    return "".join(out)


def tokenizer_files(tok: RegexTokenizer, cfg: ModelConfig) -> dict[str, dict]:
    """`tokenizer.json` and `tokenizer_config.json` for `AutoTokenizer.from_pretrained`: our
    tokenizer, the split regex in Oniguruma's reading, the fast class named (see above)."""
    if tok.vocab_size > cfg.vocab_size:
        raise MyGPT2Error(
            f"the tokenizer {tok.name} has {tok.vocab_size} ids but the model only "
            f"{cfg.vocab_size}: it is not the tokenizer this model was trained with."
        )
    doc = tok.to_json_dict()
    for step in doc["pre_tokenizer"]["pretokenizers"]:
        if step["type"] == "Split":
            step["pattern"]["Regex"] = onig_pattern(tok.pattern)
    config: dict = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": cfg.T,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
    }
    if EOT in tok.special_tokens:
        config |= {"bos_token": EOT, "eos_token": EOT}
    return {"tokenizer.json": doc, "tokenizer_config.json": config}


def save_pretrained(
    model: GPT, directory: str | os.PathLike, tokenizer: RegexTokenizer | None = None
) -> None:
    """Write config.json + model.safetensors that `GPT2LMHeadModel.from_pretrained` loads (for
    the Llama variant, `LlamaForCausalLM.from_pretrained`), and with `tokenizer` the files of
    `AutoTokenizer.from_pretrained`; a variant neither computes is refused before anything is
    written."""
    cfg = model.config
    weights = save(hf_state_dict(model), metadata={"format": "pt"})
    hf_config = gpt2_config(cfg) if export_architecture(cfg) == "gpt2" else llama_config(cfg)
    files = {} if tokenizer is None else tokenizer_files(tokenizer, cfg)
    if tokenizer is not None:
        eot = tokenizer.special_tokens.get(EOT)
        hf_config["bos_token_id"] = hf_config["eos_token_id"] = eot
    files["config.json"] = hf_config
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    for name, doc in files.items():
        text = json.dumps(doc, indent=2, ensure_ascii=False).encode("utf-8")
        atomic_write(path / name, lambda fh, text=text: fh.write(text))
    atomic_write(path / "model.safetensors", lambda fh: fh.write(weights))


def save_safetensors(model: GPT, path: str | os.PathLike) -> None:
    """Our own state dict (without the tied lm_head copy) as safetensors, written atomically."""
    tied = model.config.tie_embeddings
    sd = {
        k: v.contiguous()
        for k, v in model.state_dict().items()
        if k != "lm_head.weight" or not tied
    }
    data = save(sd, metadata={"format": "pt", "mygpt2_config": json.dumps(vars(model.config))})
    atomic_write(path, lambda fh: fh.write(data))
