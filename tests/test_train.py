"""Training: the loop end to end, exact resume, DDP parity, bad input; `train_step` and
`evaluate` against one big batch (token-weighted loss) on one and two processes."""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mygpt2.checkpoint import load_checkpoint, load_model_and_tokenizer
from mygpt2.commands.args import load_config
from mygpt2.config import Config, ModelConfig, merge_saved
from mygpt2.data import construct_data_loaders, padding_id
from mygpt2.errors import MyGPT2Error, RunError
from mygpt2.evaluation.text import batches_nll
from mygpt2.model import GPT
from mygpt2.optim import get_lr
from mygpt2.prepare import ensure_prepared
from mygpt2.tokenizer import RegexTokenizer
from mygpt2.train import NonFiniteLossError, evaluate, train, train_step

REPO = Path(__file__).resolve().parents[1]


def make_corpus(root: Path, shakespeare_path: Path) -> dict[str, str]:
    """A 200 kB slice of Tiny Shakespeare and a 320-token tokenizer trained on it, in `root`."""
    text = shakespeare_path.read_text(encoding="utf-8")[:200_000]
    data = root / "shakespeare_slice.txt"
    data.write_text(text, encoding="utf-8")
    tok = RegexTokenizer()
    tok.train(text, 320)
    tok_path = root / "tokenizer.json"
    tok.save(tok_path)
    return {"data": str(data), "tokenizer_path": str(tok_path), "cache": str(root / "cache")}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shakespeare_path) -> dict[str, str]:
    return make_corpus(tmp_path_factory.mktemp("corpus"), shakespeare_path)


def tiny_args(corpus: dict[str, str], out_dir: Path, **overrides) -> list[str]:
    """Flags for a seconds-long run of a tiny model."""
    values = dict(
        data=corpus["data"],
        tokenizer_path=corpus["tokenizer_path"],
        cache_dir=corpus["cache"],
        out_dir=str(out_dir),
        n_layers=2,
        n_heads=2,
        n_emb=32,
        T=32,
        batch_size=4,
        macro_batch_size=8,
        max_steps=8,
        eval_interval=4,
        eval_batches=2,
        lr=3e-3,
        min_lr=3e-4,
        warmup_ratio=0.25,
        device="cpu",
        dtype="float32",
    )
    if "init_from" in overrides:  # the weights fix the shape; only T may crop it
        for key in ("n_layers", "n_heads", "n_emb", "T"):
            values.pop(key)
    values.update(overrides)
    return [f"--{k}={v}" for k, v in values.items()]


def tiny_config(corpus, out_dir, **overrides) -> Config:
    return load_config(tiny_args(corpus, out_dir, **overrides))


def test_training_reduces_loss_and_writes_outputs(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    cfg = tiny_config(corpus, out, max_steps=20, eval_interval=10)
    result = train(cfg)
    assert cfg.model.vocab_size != 320  # the run resolved its own copy of the config
    printed = capsys.readouterr().out
    assert printed.index("[model]") < printed.index("\nmodel: ") < printed.index("\ndone: 20")
    assert f"best val loss {result['best_val_loss']:.4f}; outputs in '{out}'." in printed
    assert f" val tokens in {corpus['cache']}" in printed  # where the token files are
    history = result["history"]
    train_losses = [r["loss"] for r in history if r["kind"] == "train"]
    assert len(train_losses) == 20
    assert train_losses[-1] < train_losses[0] - 0.5  # it learns
    assert math.log(320) == pytest.approx(train_losses[0], abs=0.3)  # starts near uniform
    for name in ("checkpoint.pt", "loss_plot.png", "metrics.jsonl"):
        assert (out / name).is_file(), name
    rows = [
        json.loads(line)
        for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [10, 20]
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["step"] == 20
    assert ckpt["config"]["model"]["n_emb"] == 32
    assert ckpt["tokenizer"]["fingerprint"]
    assert (out / "loss_plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_is_bitwise_exact(corpus, tmp_path):
    """2N steps straight == N steps, stop, --resume N more (with shuffling and dropout)."""
    common = dict(max_steps=8, dropout=0.1, shuffle="true", eval_interval=3)
    straight = train(tiny_config(corpus, tmp_path / "a", **common))
    train(tiny_config(corpus, tmp_path / "b", stop_at=4, **common))
    resumed = train(tiny_config(corpus, tmp_path / "b", resume="true", **common))
    a = load_checkpoint(tmp_path / "a" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / "checkpoint.pt")["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    timing = {"tokens_per_s", "mfu", "elapsed_s"}  # wall-clock figures differ run to run

    def losses(history):
        return [{k: v for k, v in row.items() if k not in timing} for row in history]

    assert losses(straight["history"]) == losses(resumed["history"])
    assert len(straight["history"]) == 8 + 3  # 8 steps; evals at steps 3, 6 and the last


def test_resume_trains_at_a_newly_given_dropout(corpus, tmp_path):
    """dropout is the one model setting a resume may change: the resumed steps run at it (they
    ran at the checkpoint's while the printed and saved config said the new one)."""
    common = dict(max_steps=6, eval_interval=3)
    for run in ("same", "new"):
        train(tiny_config(corpus, tmp_path / run, stop_at=3, **common))
    train(tiny_config(corpus, tmp_path / "same", resume="true", **common))
    train(tiny_config(corpus, tmp_path / "new", resume="true", dropout=0.3, **common))
    same = load_checkpoint(tmp_path / "same" / "checkpoint.pt")
    new = load_checkpoint(tmp_path / "new" / "checkpoint.pt")
    assert Config.from_saved(new["config"]).model.dropout == 0.3
    assert any(not torch.equal(same["model"][k], new["model"][k]) for k in same["model"])


def test_a_stop_at_behind_the_checkpoint_says_nothing_was_trained(corpus, tmp_path, capsys):
    """--resume --stop_at at or before the checkpoint's step trains nothing: it says so and how
    to go on (it said 'stopped at step 3', as if this invocation had stopped there)."""
    common = dict(max_steps=6, eval_interval=3)
    train(tiny_config(corpus, tmp_path, stop_at=3, **common))
    capsys.readouterr()
    done = train(tiny_config(corpus, tmp_path, resume="true", stop_at=2, **common))
    said = "".join(capsys.readouterr())
    assert done["step"] == 3
    assert "--stop_at 2 is not past the checkpoint's step 3 (of 6): nothing trained" in said
    assert "--resume" in said and "--stop_at" not in said.split("without one:")[1]


def test_plain_resume_takes_everything_from_the_checkpoint(corpus, tmp_path):
    """`run_train.py --resume --out_dir D` alone continues a run with non-default settings."""
    train(tiny_config(corpus, tmp_path, max_steps=6, stop_at=3))
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "run_train.py"),
            "--resume",
            f"--out_dir={tmp_path}",
            "--device=cpu",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["step"] == 6
    assert ckpt["config"]["model"]["n_emb"] == 32


def test_init_from_gpt2_weights_with_a_shorter_context(corpus, tmp_path, gpt2_tiktoken_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=64))
    hf.save_pretrained(tmp_path / "hf")
    cfg = tiny_config(
        corpus,
        tmp_path / "out",
        init_from=str(tmp_path / "hf"),
        T=16,
        tiktoken_file=str(gpt2_tiktoken_path),
        max_steps=2,
    )
    result = train(cfg)
    ckpt = load_checkpoint(tmp_path / "out" / "checkpoint.pt")
    assert ckpt["config"]["model"]["T"] == 16  # cropped from 64
    assert ckpt["config"]["model"]["n_emb"] == 16  # the loaded shape, not the flags'
    assert ckpt["config"]["tokenizer"]["use_tiktoken"] is True
    assert ckpt["model"]["transformer.wpe.weight"].shape == (16, 16)
    # the crop keeps the first 16 position embeddings
    from mygpt2.run_setup import build_model

    cfg.model.T, cfg.run.init_from = 16, str(tmp_path / "hf")
    cfg.model.dropout = 0.2  # a given --dropout reaches the loaded weights' modules
    cropped = build_model(cfg, 50257)
    assert torch.equal(cropped.transformer.wpe.weight, hf.transformer.wpe.weight[:16].detach())
    assert math.isfinite(result["train_loss"])
    assert cropped.config.dropout == 0.2
    dropouts = [m.p for m in cropped.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and set(dropouts) == {0.2}
    assert {b.attn.dropout for b in cropped.transformer.h} == {0.2}


def test_resume_refuses_changed_model(corpus, tmp_path):
    train(tiny_config(corpus, tmp_path, max_steps=2))
    with pytest.raises(MyGPT2Error, match=r"n_emb: checkpoint 32, given 64"):
        train(tiny_config(corpus, tmp_path, max_steps=4, n_emb=64, resume="true"))


def test_resume_without_checkpoint_says_where_it_looked(corpus, tmp_path):
    with pytest.raises(MyGPT2Error, match="no checkpoint at"):
        train(tiny_config(corpus, tmp_path / "empty", resume="true"))


def test_nan_loss_stops_names_the_step_and_keeps_the_checkpoint(corpus, tmp_path):
    """A fault while training: exit code 1; the hint suggests clipping only when it is off."""
    train(tiny_config(corpus, tmp_path, max_steps=8, stop_at=2, warmup_ratio=0.0))
    before = load_checkpoint(tmp_path / "checkpoint.pt")
    for clipping, hint in ((0.0, "a lower --lr or --grad_clipping 1.0."), (1.0, "a lower --lr.")):
        # an infinite learning rate turns the weights to NaN at step 3: step 4's loss is NaN
        cfg = tiny_config(
            corpus,
            tmp_path,
            max_steps=8,
            resume="true",
            lr=float("inf"),
            min_lr=0.0,
            warmup_ratio=0.0,
            grad_clipping=clipping,
        )
        with pytest.raises(RunError, match=r"became nan at step 4") as e:
            train(cfg)
        assert e.value.exit_code == 1
        assert str(e.value).endswith(f"Try {hint}")  # float32 already: not suggested
        after = load_checkpoint(tmp_path / "checkpoint.pt")
        assert after["step"] == 2
        assert torch.equal(
            after["model"]["transformer.wte.weight"], before["model"]["transformer.wte.weight"]
        )
    assert not (tmp_path / ".lock").exists()  # released on the error


def test_sigint_saves_a_checkpoint_and_exits_130_with_the_resume_line(corpus, tmp_path):
    args = tiny_args(corpus, tmp_path, max_steps=100000, eval_interval=100000)
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "run_train.py"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    deadline = time.time() + 120
    while (
        not (tmp_path / "metrics.jsonl").is_file()
        or (tmp_path / "metrics.jsonl").stat().st_size < 500
    ):
        assert time.time() < deadline, "training did not start"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output  # the shell's convention for SIGINT
    step = load_checkpoint(tmp_path / "checkpoint.pt")["step"]
    assert step >= 1
    script = shlex.quote(str(REPO / "run_train.py"))
    resume = f"python {script} {shlex.join(args)} --resume"
    assert f"\nstopped at step {step} of 100000; resume with: {resume}\n" in output
    assert not (tmp_path / ".lock").exists()


def test_compile_runs_on_cpu(corpus, tmp_path, monkeypatch):
    compiled = []
    real_compile = torch.compile

    def spy(model, *args, **kwargs):
        compiled.append(type(model).__name__)
        return real_compile(model, *args, **kwargs)

    monkeypatch.setattr(torch, "compile", spy)
    # health statistics too: their hook points must fire inside the compiled forward
    eager = train(tiny_config(corpus, tmp_path / "eager", max_steps=2, health_interval=1))
    result = train(
        tiny_config(corpus, tmp_path / "compiled", max_steps=2, compile="true", health_interval=1)
    )
    assert compiled == ["GPT"]  # only the run that asked for it, on the model itself
    # the compiled model computes the same function (up to float reassociation)
    assert result["train_loss"] == pytest.approx(eager["train_loss"], abs=1e-4)
    health = [[r for r in run["history"] if r["kind"] == "health"] for run in (eager, result)]
    assert [r["step"] for r in health[1]] == [r["step"] for r in health[0]] == [1, 2]
    for want, got in zip(*health, strict=True):
        for layer in ("L0", "L1"):
            for key in ("grad_norm", "attn_rms", "mlp_rms", "resid_rms"):
                assert got["layers"][layer][key] == pytest.approx(
                    want["layers"][layer][key], rel=1e-3
                ), (layer, key)
            assert got["layers"][layer]["attn_entropy"] == pytest.approx(
                want["layers"][layer]["attn_entropy"], rel=1e-3
            )
    ckpt = load_checkpoint(tmp_path / "compiled" / "checkpoint.pt")
    assert not any(k.startswith("_orig_mod.") for k in ckpt["model"])  # the plain module saved


def test_bfloat16_autocast_on_cpu(corpus, tmp_path):
    fp32 = train(tiny_config(corpus, tmp_path / "fp32", max_steps=3))
    bf16 = train(tiny_config(corpus, tmp_path / "bf16", max_steps=3, dtype="bfloat16"))
    a = [r["loss"] for r in fp32["history"] if r["kind"] == "train"]
    b = [r["loss"] for r in bf16["history"] if r["kind"] == "train"]
    assert a != b  # bf16 really ran: its rounding shows in the losses
    assert a == pytest.approx(b, abs=0.05)  # and it trains the same model


DDP_RUNNER = """
import json, sys
from mygpt2.commands.args import load_config
from mygpt2.model import GPT
from mygpt2.optim import get_lr
from mygpt2.prepare import ensure_prepared
from mygpt2.train import NonFiniteLossError, evaluate, train, train_step
import torch.distributed as dist
result = train(load_config(sys.argv[2:]))
import os
if os.environ.get("RANK", "0") == "0":
    losses = [r["loss"] for r in result["history"] if r["kind"] == "train"]
    evals = [r for r in result["history"] if r["kind"] == "eval"]
    out = {"train": losses, "eval": evals}
    open(sys.argv[1], "w", encoding="utf-8").write(json.dumps(out))
"""


def write_choices(path: Path) -> None:
    """Three multiple-choice items (HellaSwag's fields) for --eval_tasks."""
    items = [
        {"ctx": "ROMEO: I will", "endings": [" go.", " the the the", " xq zv"], "label": 0},
        {"ctx": "KING: My lord,", "endings": [" zzz", " I pray you.", " qqq qq"], "label": 1},
        {"ctx": "To be, or not", "endings": [" to be", " kx", " jjj"], "label": 0},
    ]
    path.write_text("".join(json.dumps(i) + "\n" for i in items), encoding="utf-8")


def test_two_process_gloo_matches_one_process(corpus, tmp_path, shakespeare_path):
    """Two gloo ranks train as one process does, and the run-time evaluations (validation
    loss and bits per byte summed over ranks, eval_data and eval_tasks on rank 0) agree."""
    script = tmp_path / "runner.py"
    script.write_text(DDP_RUNNER, encoding="utf-8")
    held_out = tmp_path / "held_out.txt"
    held_out.write_text(shakespeare_path.read_text(encoding="utf-8")[-20_000:], encoding="utf-8")
    task = tmp_path / "choices.jsonl"
    write_choices(task)
    # macro batch 16 of 4-sequence micro-batches: 4 accumulation steps alone, 2 on each of 2
    common = dict(
        max_steps=4,
        eval_interval=2,
        shuffle="false",
        macro_batch_size=16,
        eval_data=held_out,
        eval_tasks=f"{task},{task}",  # a list of two files (one named twice)
    )
    args = tiny_args(corpus, tmp_path / "one", **common)
    single = tmp_path / "single.json"
    subprocess.run([sys.executable, str(script), str(single), *args], check=True, cwd=tmp_path)
    double = tmp_path / "double.json"
    args2 = tiny_args(corpus, tmp_path / "two", **common)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--standalone",  # the rendezvous binds a free port itself: no race for one
            str(script),
            str(double),
            *args2,
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert ddp.returncode == 0, ddp.stderr
    # rank 0 alone prints: one config, one banner, one final line
    for message in ("[model]", "\nmodel: ", "\ndone: 4 steps"):
        assert ddp.stdout.count(message) == 1, message
    assert "processes 2 | accum_steps 2" in ddp.stdout
    one, two = (
        json.loads(single.read_text(encoding="utf-8")),
        json.loads(double.read_text(encoding="utf-8")),
    )
    assert len(one["train"]) == len(two["train"]) == 4
    for a, b in zip(one["train"], two["train"], strict=True):
        assert a == pytest.approx(b, abs=1e-4)
    assert [r["step"] for r in one["eval"]] == [r["step"] for r in two["eval"]] == [2, 4]
    # eval_data and eval_tasks: rank 0 alone, on weights equal to the single process's
    keys = ("eval_data_loss", "eval_data_bpb", "acc/choices", "acc_norm/choices")
    for a, b in zip(one["eval"], two["eval"], strict=True):
        assert b["n/choices"] == 3 and b["eval_data_tokens"] == a["eval_data_tokens"] > 0
        for key in keys:
            assert a[key] == pytest.approx(b[key], abs=1e-3), key
    # validation: each rank its own shard, summed over both; recomputed here in one process
    cfg = load_config(args2)
    model, tok = load_model_and_tokenizer(load_config(["--out_dir", str(tmp_path / "two")]))
    train_tokens, val_tokens, meta = ensure_prepared(cfg, tok)
    nats = targets = nbytes = 0
    for rank in range(2):
        _, val = construct_data_loaders(
            cfg, train_tokens, val_tokens, padding_id(meta, tok), rank=rank, world_size=2
        )
        shard_nats, shard_count = batches_nll(model, val)
        nats, targets = nats + shard_nats.item(), targets + shard_count.item()
        for _, y in val:
            ids = [i for i in y.flatten().tolist() if i != -100 and i != tok.eot_id]
            nbytes += sum(len(tok.decode_bytes([i])) for i in ids)
    last = two["eval"][-1]
    assert last["val_loss"] == pytest.approx(nats / targets, rel=1e-5)
    # bits per byte: the loss times the targets, in bits, over the targets' bytes
    assert last["val_bpb"] == pytest.approx(nats / math.log(2) / nbytes, rel=1e-5)


def test_single_pass_runs_one_epoch(corpus, tmp_path):
    result = train(
        tiny_config(
            corpus,
            tmp_path,
            single_pass="true",
            max_steps=1,
            eval_interval=1000,
            batch_size=64,
            macro_batch_size=128,
        )
    )
    # every training block once: blocks of T=32 over the train split, 128 sequences per step
    from mygpt2.prepare import open_prepared

    cfg = tiny_config(corpus, tmp_path)
    train_tokens, _, _ = open_prepared(cfg, RegexTokenizer.load(corpus["tokenizer_path"]))
    blocks = len(range(0, len(train_tokens) - 1, 32))
    assert result["step"] == blocks // 128


def test_fine_tune_an_exported_model_with_its_own_tokenizer(corpus, tmp_path):
    """--init_from a HF dir exported by mygpt2, with the tokenizer file it was trained with."""
    train(tiny_config(corpus, tmp_path / "first", max_steps=2))
    assert run_export(tmp_path / "first", tmp_path / "hf") == 0
    result = train(
        tiny_config(corpus, tmp_path / "tuned", init_from=str(tmp_path / "hf"), max_steps=2)
    )
    ckpt = load_checkpoint(tmp_path / "tuned" / "checkpoint.pt")
    assert ckpt["config"]["tokenizer"]["use_tiktoken"] is False
    assert ckpt["config"]["model"]["vocab_size"] == 320
    assert math.isfinite(result["train_loss"])


def run_export(out_dir: Path, hf_dir: Path) -> int:
    from mygpt2.cli import main

    return main(["export", f"--out_dir={out_dir}", f"--hf={hf_dir}"])


# ----------------------------------------------------------------------------- train_step


def tiny_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(ModelConfig(n_layers=1, n_heads=2, n_emb=16, T=8, vocab_size=40))


class RecordingSGD(torch.optim.SGD):
    """SGD that keeps a copy of the gradients it was stepped with."""

    def step(self, closure=None):
        self.grads = [p.grad.clone() for g in self.param_groups for p in g["params"]]
        return super().step(closure)


def uneven_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Four micro-batches of 2 x 8 whose valid targets number 16, 11, 3 and 14."""
    gen = torch.Generator().manual_seed(7)
    batches = []
    for ignored in ([0, 0], [5, 0], [8, 5], [0, 2]):
        x = torch.randint(0, 40, (2, 8), generator=gen)
        y = torch.randint(0, 40, (2, 8), generator=gen)
        for row, n in enumerate(ignored):
            if n:
                y[row, 8 - n :] = -100  # padded tails, as the short last block of a split
        batches.append((x, y))
    return batches


def one_big_batch(batches) -> tuple[float, list[torch.Tensor]]:
    """Mean loss and gradients of all the micro-batches as one batch."""
    model = tiny_model()
    x = torch.cat([x for x, _ in batches])
    y = torch.cat([y for _, y in batches])
    _, loss = model(x, y, return_logits=False)
    loss.backward()
    return loss.item(), [p.grad for p in model.parameters()]


def test_accumulating_uneven_micro_batches_equals_one_big_batch():
    batches = uneven_batches()
    want_loss, want_grads = one_big_batch(batches)
    model = tiny_model()
    opt = RecordingSGD(model.parameters(), lr=0.0)
    result = train_step(model, opt, batches)
    assert result.tokens == 16 + 11 + 3 + 14
    assert result.loss == pytest.approx(want_loss, abs=1e-6)
    for got, want in zip(opt.grads, want_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    # a mean of per-micro-batch means would weigh the 3-token batch like the 16-token one
    means = [model(x, y)[1].item() for x, y in batches]
    assert sum(means) / len(means) != pytest.approx(want_loss, abs=1e-3)


DDP_STEP = """
import os, sys, torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
sys.path.insert(0, sys.argv[3])
from test_train import RecordingSGD, tiny_model, uneven_batches
from mygpt2.train import train_step
torch.set_num_threads(1)
rank = int(sys.argv[1])
# a rendezvous file, not a TCP port: parallel test runs cannot collide
dist.init_process_group("gloo", init_method=f"file://{sys.argv[4]}", rank=rank, world_size=2)
model = DistributedDataParallel(tiny_model())
opt = RecordingSGD(model.parameters(), lr=0.0)
# rank 0 takes the first two micro-batches (27 valid targets), rank 1 the last two (17)
result = train_step(model, opt, uneven_batches()[2 * rank : 2 * rank + 2])
if rank == 0:
    torch.save({"loss": result.loss, "tokens": result.tokens, "grads": opt.grads}, sys.argv[2])
dist.barrier()  # neither rank leaves the group while the other may still talk to it
dist.destroy_process_group()
# gloo's threads can abort in C++ teardown at interpreter exit ("terminate called without an
# active exception") after all work is done; leave without running those destructors
os._exit(0)
"""


def test_two_gloo_processes_with_uneven_tokens_equal_one_big_batch(tmp_path):
    out = tmp_path / "rank0.pt"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                DDP_STEP,
                str(rank),
                str(out),
                str(Path(__file__).parent),
                str(tmp_path / "rendezvous"),
            ],
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
    got = torch.load(out, weights_only=True)
    want_loss, want_grads = one_big_batch(uneven_batches())
    assert got["tokens"] == 44
    assert got["loss"] == pytest.approx(want_loss, abs=1e-6)
    for g, want in zip(got["grads"], want_grads, strict=True):
        torch.testing.assert_close(g, want, rtol=0, atol=1e-6)


def test_evaluation_is_the_mean_over_valid_targets():
    batches = uneven_batches()
    model = tiny_model()
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in batches:  # by hand: every valid target's loss, summed, over their number
            logits, _ = model(x)
            keep = y != -100
            total += torch.nn.functional.cross_entropy(
                logits[keep], y[keep], reduction="sum"
            ).item()
            count += int(keep.sum())
    assert count == 44
    assert evaluate(model, batches) == pytest.approx(total / count, rel=1e-6)
    assert model.training  # back in training mode for the next step


def test_clipping_sees_and_reports_unscaled_gradients():
    """With a GradScaler, the gradients are unscaled before the norm is taken and clipped."""
    batches = uneven_batches()
    _, want_grads = one_big_batch(batches)
    true_norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in want_grads])).item()
    for clip, applied in ((1e9, true_norm), (0.05, 0.05)):  # not clipping, then clipping
        model = tiny_model()
        opt = RecordingSGD(model.parameters(), lr=0.0)
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)  # enabled, float32 gradients
        result = train_step(model, opt, batches, scaler=scaler, grad_clipping=clip)
        assert result.grad_norm == pytest.approx(true_norm, rel=1e-5)  # the unscaled norm
        seen = torch.linalg.vector_norm(torch.stack([g.norm() for g in opt.grads])).item()
        assert seen == pytest.approx(applied, rel=1e-5)  # what the optimizer stepped with


class ConstantLoss(torch.nn.Module):
    """A stand-in model whose summed loss is `value` (times a weight, so it has gradients)."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
        self.value = value

    def forward(self, x, y, return_logits=True, reduction="mean"):
        return None, self.w * self.value


def test_train_step_sets_lr():
    model = tiny_model()
    opt = RecordingSGD(model.parameters(), lr=0.0)
    train_step(model, opt, uneven_batches()[:1], lr=0.5)
    assert [g["lr"] for g in opt.param_groups] == [0.5]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_loss_stops_before_updating(value):
    model = ConstantLoss(value)
    opt = RecordingSGD(model.parameters(), lr=0.5)
    with pytest.raises(NonFiniteLossError, match=f"became {value}"):
        train_step(model, opt, uneven_batches()[:2])
    assert not hasattr(opt, "grads")  # never stepped
    assert model.w.item() == 1.0


def test_best_val_loss_keeps_the_best(tmp_path, monkeypatch):
    from types import SimpleNamespace

    train_module = sys.modules["mygpt2.train"]  # the module; mygpt2.train is the function
    from mygpt2.evaluation.during_training import RunEvals
    from mygpt2.metrics import MetricsLog

    losses = iter([3.0, 2.0, 2.5])
    monkeypatch.setattr(train_module, "evaluate", lambda *args, **kwargs: next(losses))
    run = SimpleNamespace(
        model=None,
        val_loader=None,
        dtype=torch.float32,
        step=0,
        tokens_per_step=10,
        best_val=math.inf,
        val_loss=None,
        elapsed_s=0.0,
        log=MetricsLog(tmp_path, enabled=False),
        dist=SimpleNamespace(enabled=False, is_main=True),
        raw_model=None,
        # no eval_data or tasks; the validation batches' targets and bytes already counted
        evals=RunEvals(tokenizer=None, token_bytes=None, batch_size=1, val_counts=(10, 20)),
    )
    for step in (1, 2, 3):
        run.step = step
        train_module.evaluate_run(run)
    assert (run.val_loss, run.best_val) == (2.5, 2.0)
    assert [r["best_val_loss"] for r in run.log.history] == [3.0, 2.0, 2.0]
    assert run.log.history[0]["val_bpb"] == pytest.approx(3.0 * 10 / math.log(2) / 20)


def test_periodic_checkpoints(corpus, tmp_path, monkeypatch):
    train_module = sys.modules["mygpt2.train"]  # the module; mygpt2.train is the function

    saved = []
    real_save = train_module.save_checkpoint

    def spy(path, state):
        saved.append(state["step"])
        real_save(path, state)

    monkeypatch.setattr(train_module, "save_checkpoint", spy)
    runs = {  # (checkpoint_interval, eval_interval, checkpoint_minutes): the steps saved
        (2, 100, 10.0): [2, 4, 5],  # every 2 steps, and at the end
        (0, 2, 0.0): [2, 4, 5],  # at every evaluation (the last step evaluates)
        (0, 100, 1e-9): [1, 2, 3, 4, 5],  # time's up after every step (0 = off: test_guard)
    }
    for (interval, every, minutes), want in runs.items():
        saved.clear()
        out = tmp_path / f"{interval}-{every}-{minutes}"
        cfg = tiny_config(
            corpus,
            out,
            max_steps=5,
            checkpoint_interval=interval,
            eval_interval=every,
            checkpoint_minutes=minutes,
        )
        train(cfg)
        assert saved == want, (interval, every, minutes)


def test_given_optimizer_settings_take_effect_on_resume(corpus, tmp_path):
    """--lr/--weight_decay/--beta1/--beta2 given with --resume reach the restored optimizer;
    --lr 1e-3 counts although it is the default (the checkpoint says 3e-3)."""
    train(tiny_config(corpus, tmp_path, max_steps=4, stop_at=2, lr=3e-3))
    first = load_checkpoint(tmp_path / "checkpoint.pt")
    assert first["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.95)
    cfg = tiny_config(
        corpus,
        tmp_path,
        max_steps=4,
        resume="true",
        lr=1e-3,
        weight_decay=0.05,
        beta1=0.8,
        beta2=0.9,
    )
    train(cfg)
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["config"]["train"]["lr"] == 1e-3
    decayed, plain = ckpt["optimizer"]["param_groups"]
    assert decayed["weight_decay"] == 0.05 and plain["weight_decay"] == 0.0
    assert decayed["betas"] == plain["betas"] == (0.8, 0.9)
    resumed = Config.from_saved(ckpt["config"])
    assert decayed["lr"] == pytest.approx(get_lr(3, resumed))  # the last step's, from 1e-3
    resumed.train.lr = 3e-3
    assert decayed["lr"] != pytest.approx(get_lr(3, resumed))


def test_resume_refuses_another_tokenizer_naming_both(corpus, tmp_path):
    train(tiny_config(corpus, tmp_path, max_steps=2))
    other = RegexTokenizer()
    other.train(Path(corpus["data"]).read_text(encoding="utf-8")[:50_000], 300)
    other.save(tmp_path / "other.json")
    cfg = tiny_config(
        corpus, tmp_path, max_steps=4, resume="true", tokenizer_path=str(tmp_path / "other.json")
    )
    with pytest.raises(
        MyGPT2Error, match=r"was trained with tokenizer .*fingerprint .*other\.json"
    ):
        train(cfg)


# ----------------------------------------------------------------------------- run safety


def run_main(argv: list[str]) -> int:
    from mygpt2.cli import main

    return main(argv)


def test_a_second_run_on_a_locked_out_dir_stops_naming_the_holder(corpus, tmp_path, capsys):
    from mygpt2.lock import DirectoryLock

    with DirectoryLock(tmp_path, "mygpt2 train --the first run"):
        assert run_main(["train", *tiny_args(corpus, tmp_path)]) == 2
        err = capsys.readouterr().err
        assert f"'{tmp_path}' is in use by another run (pid {os.getpid()}" in err
        assert "mygpt2 train --the first run" in err and err.count("\n") == 1
        assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]  # nothing else written


def test_a_run_in_the_way_is_never_overwritten_silently(corpus, tmp_path, capsys, monkeypatch):
    args = tiny_args(corpus, tmp_path, max_steps=4, eval_interval=2)
    assert run_main(["train", *args, "--stop_at=2"]) == 0
    before = (tmp_path / "checkpoint.pt").read_bytes()
    best = load_checkpoint(tmp_path / "checkpoint.pt")["best_val_loss"]
    capsys.readouterr()
    assert run_main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert f"'{tmp_path}' already holds a run (checkpoint.pt: step 2 of 4, best val loss " in err
    assert f"{best:.4f}, saved {time.strftime('%Y-%m-%d')}" in err
    for way in ("--resume", "another --out_dir", "--overwrite"):
        assert way in err
    assert run_main(["train", *args, "--overwrite", "--resume"]) == 2
    assert "--overwrite and --resume contradict each other" in capsys.readouterr().err
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    # --overwrite: the old checkpoint stays until the new run's first save replaces it
    train_module = sys.modules["mygpt2.train"]
    real_save, seen = train_module.save_checkpoint, []

    def spy(path, state):
        seen.append((state["step"], load_checkpoint(path)["config"]["train"]["max_steps"]))
        real_save(path, state)

    monkeypatch.setattr(train_module, "save_checkpoint", spy)
    assert run_main(["train", *tiny_args(corpus, tmp_path, max_steps=3), "--overwrite"]) == 0
    assert seen == [(3, 4)]  # at step 3 the file still held the old run (of 4 steps)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["config"]["train"]["max_steps"] == 3


def test_stop_at_and_sigterm_exit_with_a_resume_line_that_works(
    corpus, tmp_path, capsys, monkeypatch
):
    """--stop_at: exit 0; SIGTERM: saved, exit 143; each prints the line that continues."""
    args = tiny_args(corpus, tmp_path, max_steps=6, eval_interval=100)
    assert run_main(["train", *args, "--stop_at", "2"]) == 0
    out = capsys.readouterr().out
    resume = f"mygpt2 train {shlex.join(args)} --resume"
    assert f"\nstopped at step 2 of 6; resume with: {resume}\n" in out
    train_module = sys.modules["mygpt2.train"]
    real_report = train_module.report_step

    def terminate_at_4(run, *rest):
        real_report(run, *rest)
        if run.step == 4:
            os.kill(os.getpid(), signal.SIGTERM)  # mid-loop: the step finishes and saves

    monkeypatch.setattr(train_module, "report_step", terminate_at_4)
    assert run_main(shlex.split(resume)[1:]) == 143
    out = capsys.readouterr().out
    assert f"\nstopped at step 4 of 6; resume with: {resume}\n" in out
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 4
    monkeypatch.undo()
    assert run_main(shlex.split(resume)[1:]) == 0
    assert "\ndone: 6 steps" in capsys.readouterr().out
    # once more: finished, nothing runs, and the way to extend it is said (no "nan" loss)
    mtime = (tmp_path / "checkpoint.pt").stat().st_mtime_ns
    assert run_main(shlex.split(resume)[1:]) == 0
    out = capsys.readouterr().out
    extend = f"mygpt2 train {shlex.join(a for a in args if 'max_steps' not in a)}"
    assert "is already finished (step 6 of 6); nothing to do." in out
    assert f"e.g.: {extend} --resume --max_steps=12\n" in out
    assert "nan" not in out and "train:" not in out  # no loss line, no progress bar
    assert (tmp_path / "checkpoint.pt").stat().st_mtime_ns == mtime
    assert not (tmp_path / ".lock").exists()


def test_a_signal_before_the_loop_stops_at_once_and_releases_the_lock(
    corpus, tmp_path, capsys, monkeypatch
):
    setup_module = sys.modules["mygpt2.run_setup"]

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(setup_module, "ensure_prepared", terminated)
    assert run_main(["train", *tiny_args(corpus, tmp_path)]) == 143
    assert "mygpt2 train: interrupted" in capsys.readouterr().err
    assert not (tmp_path / ".lock").exists() and not (tmp_path / "checkpoint.pt").exists()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored


def test_resume_from_another_directory_and_a_changed_corpus(corpus, tmp_path, monkeypatch):
    """Relative --data/--tokenizer_path/--out_dir are stored absolute; --resume works from
    elsewhere; other or changed data is refused naming both, unless --allow_data_change."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    text = Path(corpus["data"]).read_text(encoding="utf-8")
    (first / "corpus.txt").write_text(text, encoding="utf-8")
    (first / "tok.json").write_bytes(Path(corpus["tokenizer_path"]).read_bytes())
    monkeypatch.chdir(first)
    relative = dict(data="corpus.txt", tokenizer_path="tok.json", max_steps=6, stop_at=2)
    train(load_config(tiny_args(corpus, "run", **relative)))
    ckpt = load_checkpoint(first / "run" / "checkpoint.pt")
    source = ckpt["data_source"]
    assert source["data"] == ckpt["config"]["data"]["data"] == str(first / "corpus.txt")
    assert source["train_tokens"] > 0 and source["val_tokens"] > 0 and source["fingerprint"]

    monkeypatch.chdir(second)
    out = f"--out_dir={first / 'run'}"
    assert train(load_config([out, "--resume", "--stop_at=3", "--device=cpu"]))["step"] == 3
    # an old checkpoint without the record still resumes (and gains one)
    old = load_checkpoint(first / "run" / "checkpoint.pt")
    del old["data_source"]
    torch.save(old, first / "run" / "checkpoint.pt")
    assert train(load_config([out, "--resume", "--stop_at=4", "--device=cpu"]))["step"] == 4
    assert load_checkpoint(first / "run" / "checkpoint.pt")["data_source"] == source

    (second / "corpus.txt").write_text(text[:100_000], encoding="utf-8")
    with pytest.raises(MyGPT2Error, match="its data changed") as e:  # another file
        train(load_config([out, "--resume", "--data=corpus.txt"]))
    assert f"data: checkpoint '{first / 'corpus.txt'}', now '{second / 'corpus.txt'}'" in str(
        e.value
    )
    assert "--allow_data_change" in str(e.value)
    with (first / "corpus.txt").open("a", encoding="utf-8") as fh:  # the same file, changed
        fh.write("\nMore text.\n")
    with pytest.raises(MyGPT2Error, match=r"its data changed \(fingerprint: checkpoint '"):
        train(load_config([out, "--resume"]))
    assert load_checkpoint(first / "run" / "checkpoint.pt")["step"] == 4

    cfg = load_config([out, "--resume", "--data=corpus.txt", "--allow_data_change"])
    assert train(cfg)["step"] == 6
    ckpt = load_checkpoint(first / "run" / "checkpoint.pt")
    assert ckpt["data_source"]["data"] == str(second / "corpus.txt")
    # the permission is this invocation's: a later --resume does not inherit it
    later = merge_saved(Config.from_saved(ckpt["config"]), load_config([out, "--resume"]))
    assert later.train.allow_data_change is False
    rows = [json.loads(line) for line in (first / "run" / "metrics.jsonl").open(encoding="utf-8")]
    change = [r for r in rows if r["kind"] == "data_change"]
    assert len(change) == 1 and change[0]["step"] == 4
    assert change[0]["from"] == source and change[0]["to"] == ckpt["data_source"]


def test_target_val_loss_stops_at_the_first_evaluation_at_or_below_it(corpus, tmp_path, capsys):
    """The run stops (checkpointed, exit status 0) at the first evaluation whose loss is at or
    below the target; the loss is the one an untargeted run of the same seed logs there."""
    free = train(tiny_config(corpus, tmp_path / "free", max_steps=8, eval_interval=2))
    evals = [r for r in free["history"] if r["kind"] == "eval"]
    target = evals[1]["val_loss"]  # step 4's
    assert evals[0]["val_loss"] > target
    capsys.readouterr()
    result = train(
        tiny_config(corpus, tmp_path / "t", max_steps=8, eval_interval=2, target_val_loss=target)
    )
    assert (result["step"], result["reached_target"], result["signal"]) == (4, True, 0)
    assert result["val_loss"] == target
    assert load_checkpoint(tmp_path / "t" / "checkpoint.pt")["step"] == 4
    printed = capsys.readouterr().out
    assert f"reached target_val_loss {target}: val loss {target:.4f} at step 4 of 8" in printed
    assert free["reached_target"] is False


def test_elapsed_s_counts_training_steps_only_and_carries_across_resume(
    corpus, tmp_path, monkeypatch
):
    """Evaluation is left out of elapsed_s (each one made 0.3 s slower here), and a resumed
    run continues the count from its checkpoint."""
    train_module = sys.modules["mygpt2.train"]
    real = train_module.evaluate

    def slow(*args, **kwargs):
        time.sleep(0.3)
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate", slow)
    common = dict(max_steps=8, eval_interval=2)
    start = time.perf_counter()
    train(tiny_config(corpus, tmp_path, stop_at=4, **common))
    wall = time.perf_counter() - start
    first = load_checkpoint(tmp_path / "checkpoint.pt")
    assert 0 < first["elapsed_s"] < wall - 2 * 0.3  # two evaluations not counted
    history = train(tiny_config(corpus, tmp_path, resume="true", **common))["history"]
    rows = [r for r in history if r["kind"] in ("train", "eval")]
    assert all("elapsed_s" in r for r in rows)
    times = [r["elapsed_s"] for r in rows]
    assert times == sorted(times) and times[0] > 0
    by_step = {r["step"]: r["elapsed_s"] for r in rows if r["kind"] == "train"}
    for r in rows:
        if r["kind"] == "eval":  # an evaluation reports the training time up to its step
            assert r["elapsed_s"] == by_step[r["step"]]
    assert by_step[4] == first["elapsed_s"] < by_step[5]  # continued, not restarted


def test_a_loaded_model_reads_in_eval_mode(corpus, tmp_path):
    """load_model_and_tokenizer gives a model trained with dropout in eval mode: its logits
    and hook values are the same at every call (in train mode dropout made each differ)."""
    train(load_config(tiny_args(corpus, tmp_path, max_steps=1, eval_interval=1, dropout=0.3)))
    model, tok = load_model_and_tokenizer(load_config(["--out_dir", str(tmp_path)]))
    assert model.config.dropout == 0.3 and not model.training
    ids = tok.encode("ROMEO: what light")
    logits, cache = model.run_with_cache(ids)
    again, cache_again = model.run_with_cache(ids)
    assert torch.equal(logits, again)
    assert torch.equal(cache["blocks.1.hook_resid_post"], cache_again["blocks.1.hook_resid_post"])
