"""A sparse autoencoder (SAE): activations of one hook point as a sparse sum of features.

    f     = act(((x - b_dec) @ W_enc) + b_enc)       # (..., d_sae) feature activations
    x_hat = f @ W_dec + b_dec                        # (..., d_in)  the reconstruction

Parameters, their names and their layouts are SAELens's (`W_enc (d_in, d_sae)`,
`b_enc (d_sae)`, `W_dec (d_sae, d_in)`, `b_dec (d_in)`), so a state dict moves between the two
as it is (`mygpt2.sae.files` reads and writes SAELens's directory format). Row `W_dec[i]` is
feature i's direction in activation space.

Architectures (`SAEConfig.architecture`), each as SAELens computes it at inference:
- `standard`: act = ReLU; trained with an L1 penalty on f (times each decoder row's norm).
- `topk`: act keeps the k largest pre-activations of each row (then ReLU), zeroes the rest.
  With `rescale_acts_by_decoder_norm` (SAELens's training default) the pre-activations are
  scaled by the decoder rows' norms before the top k are chosen and f is divided by them
  before decoding; mygpt2 keeps decoder rows at unit norm, where both are identities, and
  writes the flag False.
- `jumprelu`: ReLU(pre) where pre > threshold (a parameter per feature), else 0. Loaded,
  encoded and decoded for SAEs trained elsewhere; `mygpt2 sae train` does not train it.

`apply_b_dec_to_input` (SAELens's default True) subtracts b_dec from x before encoding.
`hook_name` is the hook point (TransformerLens's names, see `mygpt2.hooks`) the SAE reads.
Hook points with heads, `(B, T, n_heads, head_size)`, are read as `n_heads * head_size` vectors
(SAELens's `reshape_activations="hook_z"`); `mygpt2.sae.splice` does the reshaping.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from mygpt2.errors import MyGPT2Error

ARCHITECTURES = ("topk", "standard", "jumprelu")
TRAINABLE = ("topk", "standard")
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}
DTYPES |= {"float16": torch.float16}


@dataclass
class SAEConfig:
    """What an SAE is: its sizes, its activation function and where it reads the model.

    The fields of SAELens's cfg.json that change what encode/decode compute are here; other
    keys of a loaded cfg.json (its `metadata`: model name, dataset, training settings) are kept
    in `metadata` and written back unchanged."""

    d_in: int
    d_sae: int
    architecture: str = "topk"
    k: int = 32  # topk: features kept per row
    l1_coefficient: float = 1.0  # standard: the training penalty's weight (not used to encode)
    hook_name: str = ""
    dtype: str = "float32"
    apply_b_dec_to_input: bool = True
    rescale_acts_by_decoder_norm: bool = False  # topk only
    reshape_activations: str = "none"  # "hook_z": (n_heads, head_size) read as one vector
    normalize_activations: str = "none"
    model_name: str = ""
    context_size: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_config(self)

    def replace(self, **changes: Any) -> SAEConfig:
        """A copy with some fields changed (and checked)."""
        return dataclasses.replace(self, **changes)


def check_config(cfg: SAEConfig) -> None:
    """Refuse sizes and settings an SAE cannot have, in one line each."""
    for name in ("d_in", "d_sae"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise MyGPT2Error(f"an SAE's {name} must be a positive integer, got {value!r}.")
    if cfg.architecture not in ARCHITECTURES:
        raise MyGPT2Error(
            f"unknown SAE architecture {cfg.architecture!r}; mygpt2 reads "
            f"{', '.join(ARCHITECTURES)} (and trains {' and '.join(TRAINABLE)})."
        )
    if cfg.architecture == "topk":
        k = cfg.k
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= cfg.d_sae:
            raise MyGPT2Error(
                f"k must be an integer from 1 to d_sae={cfg.d_sae} (the features kept per "
                f"token), got {k!r}."
            )
    l1 = cfg.l1_coefficient
    if isinstance(l1, bool) or not isinstance(l1, (int, float)) or not (l1 >= 0 and l1 < math.inf):
        raise MyGPT2Error(f"l1_coefficient must be a finite number >= 0, got {l1!r}.")
    if cfg.dtype not in DTYPES:
        raise MyGPT2Error(f"an SAE's dtype is one of {', '.join(DTYPES)}; got {cfg.dtype!r}.")
    if cfg.reshape_activations not in ("none", "hook_z"):
        raise MyGPT2Error(
            f"reshape_activations {cfg.reshape_activations!r} is not supported (none, hook_z)."
        )
    # SAELens applies no input normalisation at inference for these two
    if cfg.normalize_activations not in ("none", "expected_average_only_in"):
        raise MyGPT2Error(
            f"normalize_activations {cfg.normalize_activations!r} is not supported by mygpt2 "
            "(none, expected_average_only_in); fold the normalisation into the weights first."
        )


def check_feature(feature: Any, d_sae: int) -> int:
    """`feature` as a feature id of an SAE with `d_sae` features, or a one-line error: the one
    check that steering (API, command, server) and browsing make."""
    if isinstance(feature, bool) or not isinstance(feature, int):
        raise MyGPT2Error(f"a feature is a whole number, got {feature!r}.")
    if not 0 <= feature < d_sae:
        raise MyGPT2Error(
            f"feature {feature} is out of range: the SAE has {d_sae} features, 0 to {d_sae - 1}."
        )
    return feature


class SAE(nn.Module):
    """A sparse autoencoder: `encode(x)` -> features, `decode(f)` -> reconstruction,
    `forward(x)` = `decode(encode(x))`. Inputs are (..., d_in) in any float dtype; the
    computation runs in the SAE's dtype."""

    def __init__(self, cfg: SAEConfig, generator: torch.Generator | None = None):
        super().__init__()
        check_config(cfg)
        self.cfg = cfg
        dtype = DTYPES[cfg.dtype]
        # SAELens's initialisation: uniform decoder rows, the encoder its transpose. Rows are
        # scaled to unit norm, which mygpt2's training keeps.
        bound = 1 / math.sqrt(cfg.d_in)
        w_dec = torch.empty(cfg.d_sae, cfg.d_in, dtype=torch.float32)
        w_dec.uniform_(-bound, bound, generator=generator)
        w_dec /= w_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.W_dec = nn.Parameter(w_dec.to(dtype))
        # a copy of its own: with d_in or d_sae 1 the transpose is contiguous as it is, and the
        # two weights would share their memory (trained as one, saved as one, loaded wrong)
        self.W_enc = nn.Parameter(w_dec.T.to(dtype, copy=True).contiguous())
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in, dtype=dtype))
        if cfg.architecture == "jumprelu":
            self.threshold = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dtype))

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    def extra_repr(self) -> str:
        c = self.cfg
        k = f", k={c.k}" if c.architecture == "topk" else ""
        return f"{c.architecture}, d_in={c.d_in}, d_sae={c.d_sae}{k}, hook={c.hook_name!r}"

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() == 0 or x.shape[-1] != self.cfg.d_in:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise MyGPT2Error(
                f"the SAE reads vectors of d_in={self.cfg.d_in} values (..., {self.cfg.d_in}); "
                f"got {shape}."
            )
        return x.to(self.W_enc.dtype)

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's pre-activations (..., d_sae), before the activation function (for
        TopK with `rescale_acts_by_decoder_norm`, after the scaling by the decoder norms)."""
        x = self._input(x)
        if self.cfg.apply_b_dec_to_input:
            x = x - self.b_dec
        pre = x @ self.W_enc + self.b_enc
        if self.cfg.architecture == "topk" and self.cfg.rescale_acts_by_decoder_norm:
            pre = pre * self.W_dec.norm(dim=-1)
        return pre

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        """The activation function of this architecture, applied to pre-activations."""
        arch = self.cfg.architecture
        if arch == "topk":
            values, indices = pre.topk(self.cfg.k, dim=-1, sorted=False)
            return torch.zeros_like(pre).scatter_(-1, indices, values.relu())
        if arch == "jumprelu":
            return pre.relu() * (pre > self.threshold).to(pre.dtype)
        return pre.relu()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations (..., d_sae) of activations x (..., d_in)."""
        return self.activate(self.pre_acts(x))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """The reconstruction (..., d_in) of feature activations f (..., d_sae)."""
        if not isinstance(f, torch.Tensor) or f.dim() == 0 or f.shape[-1] != self.cfg.d_sae:
            shape = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
            raise MyGPT2Error(
                f"the SAE decodes d_sae={self.cfg.d_sae} feature activations; got {shape}."
            )
        f = f.to(self.W_dec.dtype)
        if self.cfg.architecture == "topk" and self.cfg.rescale_acts_by_decoder_norm:
            f = f / self.W_dec.norm(dim=-1)
        return f @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction of x: decode(encode(x))."""
        return self.decode(self.encode(x))

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Scale each decoder row to unit norm (training keeps them there)."""
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
