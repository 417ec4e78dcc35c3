"""`mygpt2 sae train|eval` end to end on a tiny model: the files a run writes, --resume and
SIGTERM equal to an uninterrupted run bit for bit, eval's figures, and bad input as one line
(exit 2) with nothing left behind."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from models import tiny_gpt

import mygpt2.sae as sae_api
from mygpt2.checkpoint import save_checkpoint
from mygpt2.cli import main
from mygpt2.commands.args import load_config
from mygpt2.regex_tokenizer import RegexTokenizer
from mygpt2.sae.files import WEIGHTS_FILENAME
from mygpt2.sae.measure import evaluate

HOOK = "blocks.0.hook_resid_post"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A tiny random checkpoint (2 layers, 32 wide, T 16) with its tokenizer and a corpus."""
    root = tmp_path_factory.mktemp("sae-run")
    rng = random.Random(0)
    words = ["def", "class", "return", "self", "name", "value", "print", "import", "if"]
    text = "\n".join(" ".join(rng.choice(words) for _ in range(10)) for _ in range(3000))
    (root / "corpus.txt").write_text(text, encoding="utf-8")
    tok = RegexTokenizer()
    tok.train(text[:4000], vocab_size=280)
    tok.save(root / "tokenizer.json")
    shape = {"n_layers": 2, "n_heads": 2, "n_emb": 32, "T": 16, "vocab_size": 280}
    cfg = load_config([f"--tokenizer_path={root / 'tokenizer.json'}"] + [
        f"--{k}={v}" for k, v in shape.items()
    ])  # fmt: skip
    model = tiny_gpt(seed=2, **shape)
    save_checkpoint(root / "checkpoint.pt", {"model": model.state_dict(), "config": cfg.to_dict()})
    return root


def train_args(run_dir: Path, sae_dir: Path, *extra: str) -> list[str]:
    """A 30-step run; topk with k 4 unless `extra` says standard."""
    k = [] if "--architecture=standard" in extra else ["--k=4"]
    return [
        "sae", "train", f"--out_dir={run_dir}", f"--data={run_dir / 'corpus.txt'}",
        f"--hook={HOOK}", "--d_sae=64", *k, "--batch_size=96", "--tokens=2880",
        "--buffer_tokens=384", "--model_batch=4", "--dead_window=300", "--checkpoint_every=7",
        f"--sae_dir={sae_dir}", "--device=cpu", *extra,
    ]  # fmt: skip


def rows(sae_dir: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock figure."""
    lines = (sae_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [{k: v for k, v in json.loads(x).items() if k != "tokens_per_s"} for x in lines]


def same_sae(a: Path, b: Path) -> bool:
    sa, sb = sae_api.load(a), sae_api.load(b)
    return all(torch.equal(t, sb.state_dict()[k]) for k, t in sa.state_dict().items())


def test_train_writes_an_sae_and_a_run(run_dir, tmp_path, capsys):
    out = tmp_path / "sae"
    assert main(train_args(run_dir, out)) == 0
    assert "done: 30 steps" in capsys.readouterr().out
    names = {p.name for p in out.iterdir()}
    assert names == {"cfg.json", WEIGHTS_FILENAME, "checkpoint.pt", "metrics.jsonl",
                     "loss_plot.png"}  # fmt: skip
    sae = sae_api.load(out)
    assert sae.cfg.hook_name == HOOK and (sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.k) == (32, 64, 4)
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(64), atol=1e-5)
    history = rows(out)
    assert [r["step"] for r in history] == list(range(1, 31))
    assert all(r["l0"] == 4.0 for r in history)  # TopK: exactly k per token
    # it learns: explained variance 0.30 at the first step, 0.43 at the last
    assert history[-1]["explained_variance"] > history[0]["explained_variance"] + 0.1
    assert all(r["tokens"] == 96 * r["step"] for r in history)


def test_resume_after_stop_at_equals_an_uninterrupted_run(run_dir, tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert main(train_args(run_dir, whole, "--architecture=standard", "--k=3")) == 2  # topk's
    flags = ("--architecture=standard", "--l1_coefficient=0.002")
    assert main(train_args(run_dir, whole, *flags)) == 0
    # stop at 11: mid-block (blocks of 384 rows = 4 batches), not at a checkpoint_every step
    assert main(train_args(run_dir, parts, *flags, "--stop_at=11")) == 0
    assert json.loads((parts / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 11
    assert not same_sae(whole, parts)
    assert main(train_args(run_dir, parts, *flags, "--resume")) == 0
    assert same_sae(whole, parts)
    assert rows(whole) == rows(parts)
    ckpt = torch.load(parts / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 30 and ckpt["stream"] == {"block": 7, "offset": 192}
    # a resumed run may train on, not change its SAE
    assert main(train_args(run_dir, parts, *flags, "--resume", "--d_sae=32")) == 2
    # its settings come from its checkpoint: --resume needs only the model, data and --tokens
    short = ["sae", "train", f"--out_dir={run_dir}", f"--data={run_dir / 'corpus.txt'}",
             f"--sae_dir={parts}", "--resume", "--tokens=3072"]  # fmt: skip
    assert main(short) == 0
    assert rows(parts)[-1]["step"] == 32 and rows(parts)[:30] == rows(whole)


def test_sigterm_saves_and_the_resumed_run_equals_an_uninterrupted_one(run_dir, tmp_path):
    stopped, whole = tmp_path / "stopped", tmp_path / "whole"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = train_args(run_dir, stopped, "--tokens=5_000_000", "--checkpoint_every=100000")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mygpt2.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 120
        metrics = stopped / "metrics.jsonl"
        while time.monotonic() < deadline and proc.poll() is None:
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= 5:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert "resume with: mygpt2 sae train" in out and "--resume" in out
    at = torch.load(stopped / "checkpoint.pt", weights_only=True)["step"]
    assert 5 <= at < 52083 and not (stopped / ".lock").exists()
    total = f"--tokens={(at + 9) * 96}"
    assert main(train_args(run_dir, stopped, total, "--resume")) == 0
    assert main(train_args(run_dir, whole, total)) == 0
    assert same_sae(whole, stopped)
    assert rows(whole) == rows(stopped)


def test_eval_prints_and_writes_the_figures(run_dir, tmp_path, capsys):
    sae_dir, report = tmp_path / "sae", tmp_path / "eval.json"
    assert main(train_args(run_dir, sae_dir)) == 0
    args = ["sae", "eval", f"--out_dir={run_dir}", f"--data={run_dir / 'corpus.txt'}",
            f"--sae_dir={sae_dir}", f"--json={report}", "--tokens=1600", "--device=cpu"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "CE loss recovered (mean ablation)" in printed and "explained variance" in printed
    got = json.loads(report.read_text(encoding="utf-8"))
    assert got["tokens"] == 1600 and got["context"] == 16 and got["l0"] == 4.0
    # the same figures in-process, on the validation split's first 100 windows
    from mygpt2.checkpoint import load_model_and_tokenizer
    from mygpt2.prepare import ensure_prepared

    cfg = load_config([f"--out_dir={run_dir}", f"--data={run_dir / 'corpus.txt'}"])
    model, tok = load_model_and_tokenizer(cfg)
    _, val, _ = ensure_prepared(cfg, tok, progress=False)
    windows = torch.from_numpy(np.asarray(val[:1600], dtype=np.int64)).view(100, 16)
    want = evaluate(model.eval(), sae_api.load(sae_dir), [windows]).as_dict()
    for key in ("loss_clean", "loss_spliced", "loss_mean_ablated", "explained_variance", "mse"):
        assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), key


def refused(args: list[str], capsys) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_bad_input_is_one_line_and_leaves_nothing(run_dir, tmp_path, capsys):
    out = tmp_path / "sae"
    err = refused(train_args(run_dir, out, "--hook=blocks.0.hook_resid_pots"), capsys)
    assert "Close names: blocks.0.hook_resid_post" in err
    assert "not one vector per token" in refused(
        train_args(run_dir, out, "--hook=blocks.0.attn.hook_pattern"), capsys
    )
    assert "--k must be from 1 to --d_sae 64" in refused(train_args(run_dir, out, "--k=65"), capsys)
    assert "--k must be at least 1, got 0" in refused(train_args(run_dir, out, "--k=0"), capsys)
    assert "--d_sae must be at least 1" in refused(train_args(run_dir, out, "--d_sae=0"), capsys)
    assert "topk or standard" in refused(train_args(run_dir, out, "--architecture=gated"), capsys)
    assert not out.exists()
    # an SAE already there is not replaced silently
    assert main(train_args(run_dir, out)) == 0
    assert "--overwrite" in refused(train_args(run_dir, out), capsys)

    def eval_args(sae_dir: Path) -> list[str]:
        return ["sae", "eval", f"--out_dir={run_dir}", f"--data={run_dir / 'corpus.txt'}",
                f"--sae_dir={sae_dir}", "--tokens=320"]  # fmt: skip

    assert "not an SAE directory" in refused(eval_args(run_dir), capsys)
    wide = sae_api.SAE(sae_api.SAEConfig(d_in=48, d_sae=8, k=2, hook_name=HOOK))
    sae_api.save(wide, tmp_path / "wide")
    err = refused(eval_args(tmp_path / "wide"), capsys)
    assert "d_in=48" in err and "holds 32" in err
    elsewhere = sae_api.SAE(sae_api.SAEConfig(d_in=32, d_sae=8, k=2, hook_name="blocks.4.hook_z"))
    sae_api.save(elsewhere, tmp_path / "elsewhere")
    assert "lacks" in refused(eval_args(tmp_path / "elsewhere"), capsys)
    weights = out / WEIGHTS_FILENAME
    weights.write_bytes(weights.read_bytes()[:100])
    assert "truncated or corrupt" in refused(eval_args(out), capsys)
    assert "--json is for mygpt2 sae eval" in refused(train_args(run_dir, out, "--json=x"), capsys)


@torch.no_grad()
def test_training_losses_by_hand():
    """The reconstruction loss, the L1 penalty and AuxK written out against the dense SAE."""
    from mygpt2.sae_train import Settings, losses

    g = torch.Generator().manual_seed(0)
    sae = sae_api.SAE(sae_api.SAEConfig(d_in=8, d_sae=12, k=3, hook_name=HOOK), g)
    with torch.no_grad():
        sae.b_enc.normal_(generator=g)
        sae.b_dec.normal_(generator=g)
    x = torch.randn(5, 8, generator=g)
    since = torch.zeros(12, dtype=torch.long)
    since[[1, 4, 7, 9, 10]] = 1000  # dead: 5 features, k_aux = d_in / 2 = 4
    s = Settings(hook=HOOK, d_sae=12, k=3, dead_window=1000, aux_coefficient=0.5)
    out = losses(sae, x, since, s)
    x_hat = sae(x)
    assert torch.allclose(out["x_hat"], x_hat, atol=1e-6)
    assert float(out["recon"]) == pytest.approx(float((x - x_hat).pow(2).sum(-1).mean()), rel=1e-6)
    pre = sae.pre_acts(x).detach()
    dead = [1, 4, 7, 9, 10]
    e = (x - x_hat).detach()
    aux_rows = []
    for row in range(5):
        top = sorted(dead, key=lambda i: -float(pre[row, i]))[:4]
        e_hat = sum(pre[row, i] * sae.W_dec[i] for i in top)
        aux_rows.append(float((e_hat - e[row]).pow(2).sum()))
    want_aux = min(5 / 4, 1.0) * sum(aux_rows) / 5
    assert float(out["aux"]) == pytest.approx(want_aux, rel=1e-5)
    assert float(out["loss"]) == pytest.approx(float(out["recon"]) + 0.5 * want_aux, rel=1e-5)
    assert float(out["active"]) == 3.0
    assert out["fired"].tolist() == (sae.encode(x) != 0).any(0).tolist()

    standard = sae_api.SAE(sae_api.SAEConfig(d_in=8, d_sae=12, architecture="standard"), g)
    with torch.no_grad():
        standard.W_dec.mul_(torch.linspace(0.5, 2, 12)[:, None])  # rows off unit length
    s = Settings(hook=HOOK, d_sae=12, architecture="standard", l1_coefficient=0.25)
    out = losses(standard, x, torch.zeros(12, dtype=torch.long), s)
    f = standard.encode(x)
    l1 = float((f * standard.W_dec.norm(dim=1)).sum(-1).mean())
    recon = float((x - standard(x)).pow(2).sum(-1).mean())
    assert float(out["aux"]) == 0.0
    assert float(out["loss"]) == pytest.approx(recon + 0.25 * l1, rel=1e-5)
