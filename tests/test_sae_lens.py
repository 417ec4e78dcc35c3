"""mygpt2's SAE files against the real SAELens 6.x, both ways.

SAELens 6.x needs transformer-lens<4 and .venv pins 4.3, so SAELens lives in its own
directory, `.venv/sae-lens` (made by scripts/setup_saelens.sh, which scripts/setup.sh runs), and
runs in a subprocess with that directory first on PYTHONPATH. One subprocess does all of
SAELens's side (its import takes seconds): it loads the directories `mygpt2 sae train` wrote with
`SAE.load_from_disk` and encodes/decodes the same random inputs, and it builds SAEs of its own
with random weights (`TopKSAE` with `rescale_acts_by_decoder_norm` and decoder rows that are not
unit length, `StandardSAE`, `JumpReLUSAE`), saves them with `save_model` and writes their
outputs, for mygpt2.sae.load to match; and it trains a TopK SAE with its own training runner on
the tiny mygpt2 model exported to Hugging Face's format and booted through TransformerBridge,
which mygpt2 then loads, fits to the mygpt2 model and matches. Under CI (CI=true) a missing SAELens fails; elsewhere the
tests are skipped with the reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from test_sae_train import run_dir, train_args  # noqa: F401 (run_dir is a fixture)

import mygpt2.sae as sae_api
from mygpt2.checkpoint import load_model_and_tokenizer
from mygpt2.cli import main
from mygpt2.commands.args import load_config
from mygpt2.hf import save_pretrained

SAELENS = Path(os.environ.get("MYGPT2_SAELENS_PATH") or Path(sys.prefix) / "sae-lens")

SAELENS_SIDE = r"""
import json, sys
import torch
from safetensors.torch import load_file, save_file
import sae_lens
from sae_lens import SAE, JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig
from sae_lens import TopKSAE, TopKSAEConfig

job = json.loads(open(sys.argv[1]).read())
x = load_file(job["inputs"])["x"]
out = {}
for name, path in job["ours"].items():
    sae = SAE.load_from_disk(path)
    f = sae.encode(x)
    out[f"ours/{name}/class"] = type(sae).__name__
    out[f"ours/{name}/hook"] = sae.cfg.metadata.hook_name
    save_file({"f": f.contiguous(), "x_hat": sae.decode(f).contiguous(),
               "forward": sae(x).contiguous()}, f"{job['work']}/ours-{name}.safetensors")
g = torch.Generator().manual_seed(0)
d_in = x.shape[1]
def randomise(sae):
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return sae
made = {
    "topk": TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=48, k=5, rescale_acts_by_decoder_norm=True)),
    "standard": StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=40)),
    "jumprelu": JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=24)),
}
for name, sae in made.items():
    randomise(sae)
    if name == "jumprelu":
        with torch.no_grad():
            sae.threshold.abs_()
    sae.cfg.metadata.hook_name = "blocks.1.hook_resid_pre"
    sae.save_model(f"{job['work']}/theirs-{name}")
    f = sae.encode(x)
    save_file({"f": f.contiguous(), "x_hat": sae.decode(f).contiguous()},
              f"{job['work']}/theirs-{name}.safetensors")
if job.get("train"):  # an SAE trained by SAELens on the exported mygpt2 model
    import numpy as np
    from datasets import Dataset
    from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner
    from sae_lens import LoggingConfig, TopKTrainingSAEConfig
    from transformer_lens.model_bridge import TransformerBridge

    t = job["train"]
    bridge = TransformerBridge.boot_transformers(t["hf"], device="cpu")
    windows = np.load(t["tokens"]).astype(np.int64).reshape(-1, t["context"])
    cfg = LanguageModelSAERunnerConfig(
        sae=TopKTrainingSAEConfig(d_in=d_in, d_sae=64, k=4), model_name="mygpt2-tiny",
        hook_name=t["hook"], dataset_path="", is_dataset_tokenized=True, streaming=False,
        context_size=t["context"], prepend_bos=False, training_tokens=256 * 20,
        train_batch_size_tokens=256, store_batch_size_prompts=8, n_batches_in_buffer=32,
        lr=1e-3, device="cpu", n_checkpoints=0, output_path=t["out"],
        logger=LoggingConfig(log_to_wandb=False), verbose=False,
    )
    dataset = Dataset.from_dict({"input_ids": windows.tolist()})
    LanguageModelSAETrainingRunner(cfg, override_dataset=dataset, override_model=bridge).run()
    sae = SAE.load_from_disk(t["out"])
    f = sae.encode(x)
    save_file({"f": f.contiguous(), "x_hat": sae.decode(f).contiguous()},
              f"{job['work']}/trained.safetensors")
out["version"] = sae_lens.__version__
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def saelens(run_dir, tmp_path_factory):  # noqa: F811
    """Train mygpt2 SAEs, then run SAELens's side once: (work dir, its JSON answer, inputs)."""
    if not (SAELENS / "sae_lens").is_dir():
        message = f"SAELens is not installed in {SAELENS}: run bash scripts/setup_saelens.sh"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    work = tmp_path_factory.mktemp("saelens")
    ours = {
        "topk": train_args(run_dir, work / "topk", "--tokens=960"),
        "standard": train_args(run_dir, work / "standard", "--architecture=standard",
                               "--tokens=960"),
    }  # fmt: skip
    for args in ours.values():
        assert main(args) == 0
    x = torch.randn(50, 32, generator=torch.Generator().manual_seed(7)) * 3
    save_file({"x": x}, work / "x.safetensors")
    model, _ = load_model_and_tokenizer(load_config([f"--out_dir={run_dir}"]))
    save_pretrained(model, work / "hf")  # what SAELens trains on, through TransformerBridge
    tokens = torch.randint(0, 280, (64 * 16,), generator=torch.Generator().manual_seed(8))
    np.save(work / "tokens.npy", tokens.numpy())
    job = {
        "inputs": str(work / "x.safetensors"),
        "work": str(work),
        "ours": {name: str(work / name) for name in ours},
        "train": {"hf": str(work / "hf"), "tokens": str(work / "tokens.npy"), "context": 16,
                  "hook": "blocks.0.hook_resid_post", "out": str(work / "trained")},
    }  # fmt: skip
    (work / "job.json").write_text(json.dumps(job), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(SAELENS)}
    run = subprocess.run(
        [sys.executable, "-c", SAELENS_SIDE, str(work / "job.json")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return work, json.loads(run.stdout.strip().splitlines()[-1]), x


def test_saelens_is_the_6x_release(saelens):
    assert saelens[1]["version"].startswith("6.")


@pytest.mark.parametrize("arch, cls", [("topk", "TopKSAE"), ("standard", "StandardSAE")])
def test_saelens_loads_what_mygpt2_sae_train_writes(saelens, arch, cls):
    work, answer, x = saelens
    assert answer[f"ours/{arch}/class"] == cls
    assert answer[f"ours/{arch}/hook"] == "blocks.0.hook_resid_post"
    theirs = load_file(work / f"ours-{arch}.safetensors")
    ours = sae_api.load(work / arch)
    with torch.no_grad():
        f = ours.encode(x)
        assert (f != 0).any()
        assert torch.allclose(f, theirs["f"], atol=1e-5)
        assert torch.allclose(ours.decode(f), theirs["x_hat"], atol=1e-5)
        assert torch.allclose(ours(x), theirs["forward"], atol=1e-5)


@pytest.mark.parametrize("arch", ["topk", "standard", "jumprelu"])
def test_mygpt2_loads_what_saelens_saves(saelens, arch):
    work, _, x = saelens
    theirs = load_file(work / f"theirs-{arch}.safetensors")
    sae = sae_api.load(work / f"theirs-{arch}")
    assert sae.cfg.architecture == arch and sae.cfg.hook_name == "blocks.1.hook_resid_pre"
    if arch == "topk":  # the decoder rows are not unit length: the rescaling matters
        assert sae.cfg.rescale_acts_by_decoder_norm
        assert not torch.allclose(sae.W_dec.norm(dim=1), torch.ones(48), atol=0.1)
    with torch.no_grad():
        f = sae.encode(x)
        assert (f != 0).any() and (f == 0).any()
        assert torch.allclose(f, theirs["f"], atol=1e-5)
        assert torch.allclose(sae.decode(f), theirs["x_hat"], atol=1e-5)


def test_an_sae_saelens_trained_on_the_exported_model_loads_and_fits_it(saelens, run_dir):  # noqa: F811
    """SAELens trained a TopK SAE on the mygpt2 model exported to Hugging Face's format, booted
    through TransformerBridge; mygpt2 loads it, it fits the mygpt2 model, and it encodes and
    decodes as SAELens does."""
    work, _, x = saelens
    sae = sae_api.load(work / "trained")
    assert (sae.cfg.architecture, sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.k) == ("topk", 32, 64, 4)
    assert sae.cfg.hook_name == "blocks.0.hook_resid_post"
    model, _ = load_model_and_tokenizer(load_config([f"--out_dir={run_dir}"]))
    sae_api.check_fits(model, sae)
    theirs = load_file(work / "trained.safetensors")
    with torch.no_grad():
        f = sae.encode(x)
        assert (f != 0).sum(-1).max() <= 4 and (f != 0).any()
        assert torch.allclose(f, theirs["f"], atol=1e-5)
        assert torch.allclose(sae.decode(f), theirs["x_hat"], atol=1e-5)
        with sae_api.splice(model, sae):
            spliced = model.run_with_hooks([[1, 2, 3, 4]])
    assert torch.isfinite(spliced).all()
