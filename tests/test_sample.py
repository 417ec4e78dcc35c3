"""Sampling: run_pretrained.py / mygpt2 sample, interactive mode, reproducibility, bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest
import torch

from mygpt2.commands.args import load_config
from mygpt2.errors import MyGPT2Error
from mygpt2.sample import load_model, sample
from mygpt2.tokenizer import RegexTokenizer
from mygpt2.train import train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, shakespeare_path) -> Path:
    """A directory holding a briefly trained tiny model, its tokenizer and data cache."""
    root = tmp_path_factory.mktemp("sample")
    text = shakespeare_path.read_text(encoding="utf-8")[:100_000]
    (root / "data.txt").write_text(text, encoding="utf-8")
    tok = RegexTokenizer()
    tok.train(text, 300)
    tok.save(root / "tokenizer.json")
    cfg = load_config(
        [
            f"--data={root / 'data.txt'}",
            f"--tokenizer_path={root / 'tokenizer.json'}",
            f"--cache_dir={root / 'cache'}",
            f"--out_dir={root / 'out'}",
            "--n_layers=2",
            "--n_heads=2",
            "--n_emb=32",
            "--T=32",
            "--batch_size=4",
            "--macro_batch_size=4",
            "--max_steps=30",
            "--eval_interval=30",
            "--eval_batches=1",
            "--device=cpu",
        ]
    )
    train(cfg)
    return root


def sample_args(run_dir: Path, *extra: str) -> list[str]:
    return [f"--out_dir={run_dir / 'out'}", "--max_new_tokens=20", "--device=cpu", *extra]


def run_script(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "run_pretrained.py"), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def test_run_pretrained_writes_generated_txt(run_dir, tmp_path):
    result = run_script(
        sample_args(run_dir, "--start=ROMEO:", "--num_samples=2", "--seed=3"), tmp_path
    )
    assert result.returncode == 0, result.stderr
    generated = (run_dir / "out" / "generated.txt").read_text(encoding="utf-8")
    assert generated.count("--- sample") == 2
    assert generated.count("ROMEO:") >= 2  # every sample starts with the start text
    assert "tokens/s" in result.stderr
    # the suite's CPU has no bf16 flags (conftest.py), so auto keeps float32 and says why
    assert "weights in float32 (auto: one-token steps on this CPU are faster" in result.stderr
    assert "ROMEO:" in result.stdout  # streamed to the terminal too


def test_same_seed_same_text_different_seed_different_text(run_dir):
    cfg = load_config(sample_args(run_dir, "--start=KING", "--seed=7", "--temperature=1.0"))
    a = sample(cfg).texts
    b = sample(cfg).texts
    cfg.run.seed = 8
    c = sample(cfg).texts
    assert a == b
    assert a != c


def test_start_from_file_and_default_start(run_dir, tmp_path):
    start = tmp_path / "start.txt"
    start.write_text("First Citizen:\n", encoding="utf-8")
    texts = sample(load_config(sample_args(run_dir, f"--start=FILE:{start}"))).texts
    assert texts[0].startswith("First Citizen:\n")
    # default: a new document, i.e. the <|endoftext|> token
    cfg = load_config(sample_args(run_dir, "--max_new_tokens=5"))
    _, tok = load_model(cfg)
    from mygpt2.sample import encode_start

    assert encode_start(tok, cfg.sample.start, allow_special=False) == [tok.eot_id]
    assert len(sample(cfg).texts) == 1


def test_special_token_text_in_prompt_is_ordinary_unless_allowed(run_dir):
    cfg = load_config(sample_args(run_dir))
    _, tok = load_model(cfg)
    from mygpt2.sample import encode_start

    ordinary = encode_start(tok, "a<|endoftext|>", allow_special=False)
    special = encode_start(tok, "a<|endoftext|>", allow_special=True)
    assert tok.eot_id not in ordinary
    assert special[-1] == tok.eot_id


def spawn_interactive(tmp_path: Path, *args: str) -> pexpect.spawn:
    """run_pretrained.py --prompt in a real pseudo-terminal."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TERM": "dumb"}
    return pexpect.spawn(
        sys.executable,
        [str(REPO / "run_pretrained.py"), "--prompt", *args],
        cwd=str(tmp_path),
        env=env,
        encoding="utf-8",
        timeout=60,
    )


def test_interactive_mode_streams_and_takes_settings(run_dir, tmp_path):
    child = spawn_interactive(tmp_path, *sample_args(run_dir))
    child.expect("Type a prompt")
    child.expect(">>> ")
    child.sendline("/temp 0")
    child.expect("temperature = 0.0")
    child.expect(">>> ")
    child.sendline("/len 8")
    child.expect("max_new_tokens = 8")
    child.expect(">>> ")
    child.sendline("/topk -3")
    child.expect("could not set top_k")
    child.expect(">>> ")
    child.sendline("ROMEO:")
    child.expect(r"\[(\d+) tokens")
    assert int(child.match.group(1)) <= 8
    first = child.before  # the echoed prompt and the streamed continuation
    child.expect(">>> ")
    child.sendline("ROMEO:")  # greedy: the same continuation again
    child.expect(r"\[\d+ tokens")
    assert child.before == first
    assert len(first.strip()) > len("ROMEO:")
    child.expect(">>> ")
    child.sendline("/quit")
    child.expect("bye")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_interactive_ctrl_d_exits(run_dir, tmp_path):
    child = spawn_interactive(tmp_path, *sample_args(run_dir))
    child.expect(">>> ")
    child.sendeof()
    child.expect("bye")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_interactive_ctrl_c_stops_generation_and_returns_to_prompt(run_dir, tmp_path):
    child = spawn_interactive(tmp_path, *sample_args(run_dir), "--max_new_tokens=100000")
    child.expect(">>> ")
    child.sendline("ROMEO:")
    child.expect("ROMEO:")
    child.sendintr()
    child.expect(r"\[stopped\]")
    child.expect(">>> ")
    child.sendline("/quit")
    child.expect(pexpect.EOF)


def test_sampling_from_hf_gpt2_weights_with_gpt2_tokenizer(tmp_path, gpt2_tiktoken_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=64))
    hf.save_pretrained(tmp_path / "hf")
    args = [
        f"--init_from={tmp_path / 'hf'}",
        f"--tiktoken_file={gpt2_tiktoken_path}",
        f"--out_dir={tmp_path}",
        "--start=Hello",
        "--max_new_tokens=5",
        "--device=cpu",
    ]
    cfg = load_config(args)
    model, tok = load_model(cfg)
    assert tok.vocab_size == 50257 and tok.eot_id == 50256  # GPT-2's own tokenizer
    assert model.config.n_emb == 16
    texts = sample(cfg).texts
    assert texts[0].startswith("Hello")
    assert (tmp_path / "generated.txt").is_file()


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--top_k=-1", "top_k"),
        ("--top_p=0", "top_p"),
        ("--top_p=1.5", "top_p"),
        ("--temperature=-1", "temperature"),
        ("--max_new_tokens=-5", "max_new_tokens"),
    ],
)
def test_out_of_range_settings_are_clear_errors(run_dir, tmp_path, flag, message):
    result = run_script([*sample_args(run_dir), flag], tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_checkpoint_says_where_it_looked(tmp_path):
    result = run_script([f"--out_dir={tmp_path / 'nowhere'}"], tmp_path)
    assert result.returncode == 2
    assert "no checkpoint at" in result.stderr and "nowhere" in result.stderr
    assert "Traceback" not in result.stderr


def test_truncated_checkpoint_is_a_clear_error(run_dir, tmp_path):
    data = (run_dir / "out" / "checkpoint.pt").read_bytes()
    (tmp_path / "checkpoint.pt").write_bytes(data[: len(data) // 3])
    result = run_script([f"--out_dir={tmp_path}"], tmp_path)
    assert result.returncode == 2
    assert "truncated or corrupt" in result.stderr
    assert "Traceback" not in result.stderr


def test_sampling_flags_do_not_drop_the_checkpoint_tokenizer(run_dir, tmp_path):
    # a data flag unrelated to the tokenizer must not replace the checkpoint's tokenizer
    args = sample_args(run_dir, f"--cache_dir={tmp_path}", "--split=0.5", "--max_new_tokens=3")
    _, tok = load_model(load_config(args))
    assert tok.fingerprint() == RegexTokenizer.load(run_dir / "tokenizer.json").fingerprint()


def test_checkpoint_whose_tokenizer_is_gone(run_dir, tmp_path):
    from mygpt2.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(run_dir / "out" / "checkpoint.pt")
    ckpt["config"]["tokenizer"]["tokenizer_path"] = str(tmp_path / "deleted.json")
    save_checkpoint(tmp_path / "checkpoint.pt", ckpt)
    with pytest.raises(MyGPT2Error, match="cannot be loaded"):
        sample(load_config([f"--out_dir={tmp_path}", "--device=cpu"]))


def test_long_prompt_is_cropped_with_a_warning(run_dir, capsys):
    cfg = load_config(sample_args(run_dir))
    model, tok = load_model(cfg)
    from mygpt2.sample import encode_start

    text = "To be or not to be. " * 40
    full = tok.encode_ordinary(text)
    assert len(full) > model.config.T
    assert encode_start(tok, text, allow_special=False) == full
    cfg.sample.start = text
    with pytest.warns(UserWarning, match="longer than the context length"):
        assert sample(cfg).texts[0].startswith(text)  # sampling goes on from the cropped prompt
