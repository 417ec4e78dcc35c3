"""SAELens's on-disk format, both ways: a directory with `cfg.json` and `sae_weights.safetensors`.

What `sae_lens.SAE.load_from_disk(DIR)` (SAELens 6.x) reads and `SAE.save_model(DIR)` writes:
- `sae_weights.safetensors`: the state dict, `W_enc (d_in, d_sae)`, `b_enc (d_sae)`,
  `W_dec (d_sae, d_in)`, `b_dec (d_in)` (jumprelu adds `threshold (d_sae)`).
- `cfg.json`: the inference config's fields at the top level (`architecture`, `d_in`,
  `d_sae`, `dtype`, `device`, `apply_b_dec_to_input`, `normalize_activations`,
  `reshape_activations`, and `k`, `rescale_acts_by_decoder_norm` for topk) and a `metadata`
  object: `sae_lens_version` (SAELens reads a config without one, or older than 6.0, as
  its pre-6 layout, so "6.0.0" is written: the format's version), `hook_name`, `model_name`,
  `context_size`, ... . SAEs of SAELens before 6.0 keep `hook_name` (or `hook_point`) at the
  top level; that is read too.

Loading runs no code: JSON and safetensors only, never pickle. Everything is checked before a
tensor is used: a directory without cfg.json is no SAE; a weights file that is missing,
truncated or holds other tensors, and shapes that disagree with cfg.json, are one-line
`MyGPT2Error`s. Both files are written atomically (`mygpt2.fileio`), the weights first and
cfg.json last, so a directory with a cfg.json never has half a weights file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from mygpt2.errors import MyGPT2Error
from mygpt2.fileio import atomic_write, ensure_dir, fault
from mygpt2.sae.model import DTYPES, SAE, SAEConfig

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
FORMAT_VERSION = "6.0.0"  # the SAELens release whose cfg.json layout this is
# cfg.json keys that SAEConfig holds itself (the rest of `metadata` is kept as it was)
_OWN_METADATA = ("hook_name", "model_name", "context_size", "sae_lens_version")


def is_sae_dir(path: str | os.PathLike) -> bool:
    """Whether `path` looks like an SAE directory (both files present)."""
    p = Path(path)
    return (p / CFG_FILENAME).is_file() and (p / WEIGHTS_FILENAME).is_file()


def config_dict(cfg: SAEConfig) -> dict[str, Any]:
    """cfg.json's content for an SAE config, as SAELens 6.x lays it out."""
    out: dict[str, Any] = {
        "architecture": cfg.architecture,
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": cfg.dtype,
        "device": "cpu",
        "apply_b_dec_to_input": cfg.apply_b_dec_to_input,
        "normalize_activations": cfg.normalize_activations,
        "reshape_activations": cfg.reshape_activations,
    }
    if cfg.architecture == "topk":
        out["k"] = cfg.k
        out["rescale_acts_by_decoder_norm"] = cfg.rescale_acts_by_decoder_norm
    metadata = dict(cfg.metadata)
    metadata.setdefault("sae_lens_version", FORMAT_VERSION)
    metadata.setdefault("sae_lens_training_version", FORMAT_VERSION)
    metadata["hook_name"] = cfg.hook_name or None
    metadata["model_name"] = cfg.model_name or None
    metadata["context_size"] = cfg.context_size
    if cfg.architecture == "standard":
        details = dict(metadata.get("training_architecture_details") or {})
        details["l1_coefficient"] = cfg.l1_coefficient
        metadata["training_architecture_details"] = details
    out["metadata"] = metadata
    return out


def save(sae: SAE, path: str | os.PathLike) -> Path:
    """Write `sae` to the directory `path` in SAELens's format; returns the directory."""
    from safetensors.torch import save as to_bytes

    directory = ensure_dir(path)
    if directory.joinpath(CFG_FILENAME).is_dir() or directory.joinpath(WEIGHTS_FILENAME).is_dir():
        raise MyGPT2Error(
            f"'{directory}' holds a directory named like an SAE file; choose another."
        )
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in sae.state_dict().items()}
    blob = to_bytes(tensors, metadata={"format": "pt"})
    atomic_write(directory / WEIGHTS_FILENAME, lambda fh: fh.write(blob))
    text = json.dumps(config_dict(sae.cfg), indent=2) + "\n"
    atomic_write(directory / CFG_FILENAME, lambda fh: fh.write(text.encode("utf-8")))
    return directory


def _read_json(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise MyGPT2Error(f"'{path}' is not UTF-8 text: not an SAE's cfg.json.") from None
    except OSError as e:
        raise fault(e, path, "read") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise MyGPT2Error(f"'{path}' is not valid JSON ({e.msg}, line {e.lineno}).") from None
    if not isinstance(data, dict):
        raise MyGPT2Error(f"'{path}' holds JSON {type(data).__name__}, not an SAE config object.")
    return data


def config_from_dict(data: dict[str, Any], where: str = "cfg.json") -> SAEConfig:
    """An SAEConfig from cfg.json's content (SAELens 6.x, or older with top-level hook names)."""
    metadata = data.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise MyGPT2Error(f"{where}: 'metadata' must be an object.")
    if "d_in" not in data or "d_sae" not in data:
        raise MyGPT2Error(f"{where} names no d_in and d_sae: it is not an SAE's config.")
    arch = data.get("architecture", "standard")
    if arch == "standard" and data.get("activation_fn") == "topk":  # SAELens before 6.0
        arch = "topk"
        data = {**data, "k": (data.get("activation_fn_kwargs") or {}).get("k")}
    hook = metadata.get("hook_name") or data.get("hook_name") or data.get("hook_point") or ""
    model_name = metadata.get("model_name") or data.get("model_name") or ""
    context = metadata.get("context_size", data.get("context_size"))
    details = metadata.get("training_architecture_details") or {}
    kept = {k: v for k, v in metadata.items() if k not in _OWN_METADATA}
    fields: dict[str, Any] = {
        "d_in": data["d_in"],
        "d_sae": data["d_sae"],
        "architecture": arch,
        "hook_name": str(hook),
        "model_name": str(model_name),
        "context_size": context if isinstance(context, int) and context > 0 else None,
        "dtype": str(data.get("dtype", "float32")).removeprefix("torch."),
        "apply_b_dec_to_input": bool(data.get("apply_b_dec_to_input", True)),
        "normalize_activations": data.get("normalize_activations") or "none",
        "reshape_activations": data.get("reshape_activations") or "none",
        "metadata": kept,
    }
    if arch == "topk":
        fields["k"] = data.get("k", 100)  # SAELens's default
        fields["rescale_acts_by_decoder_norm"] = bool(data.get("rescale_acts_by_decoder_norm"))
    if arch == "standard" and isinstance(details, dict) and "l1_coefficient" in details:
        fields["l1_coefficient"] = details["l1_coefficient"]
    if isinstance(fields["normalize_activations"], bool):  # SAELens before 6.0
        fields["normalize_activations"] = "none"
    try:
        return SAEConfig(**fields)
    except MyGPT2Error as e:
        raise MyGPT2Error(f"{where}: {e}") from None


def expected_shapes(cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
    """The state dict's tensor names and shapes for an SAE config."""
    shapes = {
        "W_enc": (cfg.d_in, cfg.d_sae),
        "b_enc": (cfg.d_sae,),
        "W_dec": (cfg.d_sae, cfg.d_in),
        "b_dec": (cfg.d_in,),
    }
    if cfg.architecture == "jumprelu":
        shapes["threshold"] = (cfg.d_sae,)
    return shapes


def read_weights(path: Path, cfg: SAEConfig) -> dict[str, torch.Tensor]:
    """The weights file's tensors, checked against the config's names and shapes."""
    from safetensors import SafetensorError
    from safetensors.torch import load as from_bytes

    if not path.is_file():
        raise MyGPT2Error(f"'{path}' is missing: the SAE directory has a cfg.json but no weights.")
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise fault(e, path, "read") from None
    try:
        tensors = from_bytes(blob)
    except (SafetensorError, ValueError, RuntimeError, OverflowError):
        raise MyGPT2Error(
            f"'{path}' is not a readable safetensors file (truncated or corrupt). Write the SAE "
            "again."
        ) from None
    want = expected_shapes(cfg)
    missing = [k for k in want if k not in tensors]
    extra = sorted(set(tensors) - set(want))
    if missing or extra:
        what = "lacks " + ", ".join(missing) if missing else "also holds " + ", ".join(extra)
        raise MyGPT2Error(
            f"'{path}' {what}: not the weights of a {cfg.architecture} SAE ({', '.join(want)})."
        )
    for name, shape in want.items():
        got = tuple(tensors[name].shape)
        if got != shape:
            raise MyGPT2Error(
                f"'{path}': {name} is {got}, but cfg.json's d_in={cfg.d_in}, d_sae={cfg.d_sae} "
                f"make it {shape}."
            )
        if not tensors[name].dtype.is_floating_point:
            raise MyGPT2Error(f"'{path}': {name} holds {tensors[name].dtype}, not floats.")
    dtype = DTYPES[cfg.dtype]
    return {k: v.to(dtype) for k, v in tensors.items()}


def load(path: str | os.PathLike) -> SAE:
    """The SAE in directory `path` (written by mygpt2 or SAELens 6.x), on the CPU."""
    directory = Path(path)
    if not directory.exists():
        raise MyGPT2Error(f"no SAE at '{directory}': it does not exist.")
    if not directory.is_dir():
        raise MyGPT2Error(
            f"'{directory}' is a file; an SAE is a directory with {CFG_FILENAME} and "
            f"{WEIGHTS_FILENAME}."
        )
    cfg_path = directory / CFG_FILENAME
    if not cfg_path.is_file():
        raise MyGPT2Error(
            f"'{directory}' is not an SAE directory: it has no {CFG_FILENAME} (an SAE has "
            f"{CFG_FILENAME} and {WEIGHTS_FILENAME}, as 'mygpt2 sae train' and SAELens write)."
        )
    cfg = config_from_dict(_read_json(cfg_path), str(cfg_path))
    tensors = read_weights(directory / WEIGHTS_FILENAME, cfg)
    sae = SAE(cfg)
    with torch.no_grad():
        for name, tensor in tensors.items():
            getattr(sae, name).copy_(tensor)
    return sae.eval()
