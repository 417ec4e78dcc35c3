"""Sparse autoencoders on any hook point: the model, SAELens's file format, the splice.

    sae = mygpt2.sae.load("sae-dir")          # written by `mygpt2 sae train` or SAELens 6.x
    f = sae.encode(x)                          # (..., d_sae) features of (..., d_in) activations
    x_hat = sae.decode(f)                      # sae(x) is decode(encode(x))
    with mygpt2.sae.splice(model, sae):        # the hook's activation -> its reconstruction
        logits = model.run_with_hooks(ids)
    mygpt2.sae.save(sae, "other-dir")

`model.py` holds `SAEConfig` and `SAE`, `files.py` the format, `splice.py` the fit check and
the splice, `measure.py` the field's metrics, `stream.py` activations streamed from a model.
Training is a run, in `mygpt2.sae_train`.
"""

from mygpt2.sae.files import is_sae_dir, load, save
from mygpt2.sae.model import SAE, SAEConfig, check_feature
from mygpt2.sae.splice import check_fits, check_hook_name, hook_width, splice, to_rows

__all__ = [
    "SAE",
    "SAEConfig",
    "check_feature",
    "check_fits",
    "check_hook_name",
    "hook_width",
    "is_sae_dir",
    "load",
    "save",
    "splice",
    "to_rows",
]
