"""Outside clients on what mygpt2 makes, each held against our own tokenizer or the model's own
forward: transformers' `AutoTokenizer` on a `mygpt2 export` (a trained GPT-4-pattern tokenizer
and GPT-2's), lm-evaluation-harness 0.4 on the export (`--model hf`) and against `mygpt2 serve`
(`local-completions`, whose exact request body is pinned here).

The model is tiny and random, with its final norm's bias pushed toward `<|endoftext|>` so that
its greedy next token after every scored text is end-of-text: the case in which a server that
drops that token's logprobs entry makes lm-eval drop a continuation token instead. Everything is
offline: the task is a local JSON file, the tokenizer comes from the export, and the Hugging
Face libraries are told not to reach the network.
"""

from __future__ import annotations

import ipaddress
import json
import random
import socket
from pathlib import Path

import pytest
import torch
from models import tiny_gpt

from mygpt2.checkpoint import save_checkpoint
from mygpt2.cli import main
from mygpt2.commands.args import load_config
from mygpt2.tokenizer import RegexTokenizer

transformers = pytest.importorskip("transformers")

EOT = "<|endoftext|>"
CORPUS = (
    "The year 2024 had 366 days; 1999 had 365. Naïve café owners said: it's 12:30!\n"
    "  Indented   text,\ttabs and 日本語 too. THE CAT'S HAT. 3.14159 is pi.\n"
) * 30
# held out: not in CORPUS; non-ASCII, digit runs, whitespace runs, contractions, end-of-text
HELD_OUT = [
    "Ünïcödé — 東京 and emoji 😀🎉 next to ASCII.",
    "Digits: 1234567890 0.000001 -42 +7e10, 20242024 and 2026-12-06.",
    "Whitespace:   three, \t\ttabs,\n\n\nnewlines,    \u00a0no-break, \u3000ideographic.  ",
    "He'll say THEY'VE gone; she'd've known it's 'quoted' 'S 'LL.",
    f"first document{EOT}second document {EOT} third",
    "",
    "x",
]
# a multiple-choice task of three items, as lm-eval reads it from a local JSON-lines file
ITEMS = [
    {"question": "The year 2024 had", "choices": ["366 days", "365 days", "a cat"], "answer": 0},
    {"question": "Naïve café owners said:", "choices": ["it's 12:30!", "tabs"], "answer": 0},
    {"question": "3.14159 is", "choices": ["pi.", "THE HAT.", "日本語"], "answer": 0},
]


def eot_model(vocab_size: int, eot: int, seed: int = 3):
    """A tiny random model whose next token is end-of-text after any text: its final norm's
    bias points along end-of-text's embedding (tied to the output head), so that token's logit
    leads while the others still vary with the position."""
    model = tiny_gpt(seed=seed, n_layers=2, n_heads=2, n_emb=32, T=64, vocab_size=vocab_size)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(3)
        row = model.transformer.wte.weight[eot]
        model.transformer.ln_f.bias.copy_(6 * row / row.norm())
        row.mul_(2)
    return model


def write_run(root: Path, tok: RegexTokenizer, model) -> Path:
    """A run directory: tokenizer.json and a checkpoint that names it, as training leaves."""
    root.mkdir(parents=True, exist_ok=True)
    tok.save(root / "tokenizer.json")
    cfg = load_config([f"--tokenizer_path={root / 'tokenizer.json'}"])
    cfg.model = model.config
    tokenizer = {"name": tok.name, "fingerprint": tok.fingerprint()}
    state = {"model": model.state_dict(), "config": cfg.to_dict(), "tokenizer": tokenizer}
    save_checkpoint(root / "checkpoint.pt", state)
    return root


@pytest.fixture(scope="module")
def trained_tok() -> RegexTokenizer:
    tok = RegexTokenizer()  # GPT-4's split pattern: digits in runs of 1-3
    tok.train(CORPUS, vocab_size=320)
    return tok


@pytest.fixture(scope="module")
def run(tmp_path_factory, trained_tok) -> Path:
    """A run of the end-of-text model, exported with `mygpt2 export --hf`."""
    root = tmp_path_factory.mktemp("run")
    model = eot_model(trained_tok.vocab_size, trained_tok.eot_id)
    write_run(root, trained_tok, model)
    assert main(["export", f"--out_dir={root}", f"--hf={root / 'hf'}"]) == 0
    return root


def load_run_model(root: Path):
    from mygpt2.sample import load_model

    return load_model(load_config([f"--out_dir={root}", "--device=cpu"]))


def forward_logprobs(model, ids: list[int]) -> torch.Tensor:
    """log-softmax of the model's own output at every position, in float64."""
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids]))
    return torch.log_softmax(logits[0].double(), dim=-1)


def continuation_logprob(model, tok: RegexTokenizer, context: str, continuation: str) -> float:
    """What lm-eval should find: the continuation's tokens (cut as lm-eval cuts them: the whole
    text's ids after the context's) scored by our forward."""
    ctx = tok.encode(context, allowed_special="all")
    whole = tok.encode(context + continuation, allowed_special="all")
    logp = forward_logprobs(model, whole)
    return sum(float(logp[pos - 1, whole[pos]]) for pos in range(len(ctx), len(whole)))


# ------------------------------------------------------------------ the export's tokenizer


def held_out_ids_equal(export: Path, tok: RegexTokenizer) -> None:
    hf = transformers.AutoTokenizer.from_pretrained(export)
    for text in HELD_OUT:
        ours = tok.encode(text, allowed_special="all")
        assert hf(text, add_special_tokens=False).input_ids == ours, text
        assert hf.decode(ours) == tok.decode(ours)
    assert (hf.eos_token, hf.bos_token) == (EOT, EOT)
    assert hf.eos_token_id == hf.bos_token_id == tok.eot_id
    config = json.loads((export / "config.json").read_text(encoding="utf-8"))
    assert config["eos_token_id"] == config["bos_token_id"] == tok.eot_id


def test_autotokenizer_on_an_export_gives_our_ids_for_a_trained_tokenizer(run, trained_tok):
    held_out_ids_equal(run / "hf", trained_tok)
    # the two fixes are both needed: without the config naming the fast class, transformers
    # builds GPT-2's tokenizer (GPT-2's split regex); with GPT-4's regex as `regex` writes it,
    # Oniguruma keeps a digit run whole
    digits = "20242024"  # GPT-4's regex cuts 202|420|24, GPT-2's and the misread one keep it
    plain = run / "plain"
    plain.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (plain / name).write_bytes((run / "hf" / name).read_bytes())
    gpt2_class = transformers.AutoTokenizer.from_pretrained(plain)
    assert gpt2_class(digits, add_special_tokens=False).input_ids != trained_tok.encode(digits)
    (plain / "tokenizer.json").write_text(
        json.dumps(trained_tok.to_json_dict()), encoding="utf-8"
    )  # our own tokenizer.json, regex untouched
    (plain / "tokenizer_config.json").write_bytes(
        (run / "hf" / "tokenizer_config.json").read_bytes()
    )
    onig = transformers.AutoTokenizer.from_pretrained(plain)
    assert onig(digits, add_special_tokens=False).input_ids != trained_tok.encode(digits)


def test_autotokenizer_on_an_export_gives_our_ids_for_gpt2(tmp_path, gpt2_tiktoken_path):
    tok = RegexTokenizer.from_tiktoken_file(gpt2_tiktoken_path, "gpt2", {EOT: 50256})
    root = tmp_path / "run"
    root.mkdir()
    model = tiny_gpt(seed=1, n_layers=1, n_heads=2, n_emb=16, T=32, vocab_size=50257)
    cfg = load_config(
        ["--use_tiktoken=true", f"--tiktoken_file={gpt2_tiktoken_path}", "--n_layers=1",
         "--n_heads=2", "--n_emb=16", "--T=32", "--vocab_size=50257"]
    )  # fmt: skip
    tokenizer = {"name": tok.name, "fingerprint": tok.fingerprint()}
    state = {"model": model.state_dict(), "config": cfg.to_dict(), "tokenizer": tokenizer}
    save_checkpoint(root / "checkpoint.pt", state)
    assert main(["export", f"--out_dir={root}", f"--hf={tmp_path / 'hf'}"]) == 0
    held_out_ids_equal(tmp_path / "hf", tok)


def test_split_regex_in_onigurumas_reading_cuts_text_as_ours():
    import regex

    from mygpt2.bpe import GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN
    from mygpt2.hf import onig_pattern

    assert onig_pattern(GPT2_SPLIT_PATTERN) == GPT2_SPLIT_PATTERN  # `++` is possessive there
    assert onig_pattern(GPT4_SPLIT_PATTERN) == GPT4_SPLIT_PATTERN.replace(
        r"\p{N}{1,3}+", r"(?>\p{N}{1,3})"
    )
    # by hand: an atom is an escape, a class, a group or one character
    assert onig_pattern(r"(ab){2}+c|[\]x]{1,}+|\x{41}{3}+|(?i:z{2,5}+)|a{2}b") == (
        r"(?>(ab){2})c|(?>[\]x]{1,})|(?>\x{41}{3})|(?i:(?>z{2,5}))|a{2}b"
    )
    rng = random.Random(0)
    alphabet = list("aZé日 \t\n\r'sSlL0123456789.,!-_\u00a0😀")
    for pattern in (GPT4_SPLIT_PATTERN, r"\p{N}{2,}+\d|\p{L}{1,2}+[a-z]|\s"):
        ours, theirs = regex.compile(pattern), regex.compile(onig_pattern(pattern))
        for _ in range(300):
            text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
            assert theirs.findall(text) == ours.findall(text), text


def test_export_needs_the_tokenizer_and_refuses_other_variants_by_name(tmp_path, capsys):
    tok = RegexTokenizer()
    tok.train(CORPUS, vocab_size=270)
    root = write_run(tmp_path / "run", tok, tiny_gpt(vocab_size=tok.vocab_size))
    (root / "tokenizer.json").unlink()
    assert main(["export", f"--out_dir={root}", f"--hf={tmp_path / 'hf'}"]) == 2
    err = capsys.readouterr().err
    assert "cannot be loaded" in err and "--tokenizer_path" in err
    assert not (tmp_path / "hf").exists()
    # given back with the flag, the export has it
    tok.save(tmp_path / "elsewhere.json")
    flags = [f"--out_dir={root}", f"--hf={tmp_path / 'hf'}"]
    assert main(["export", *flags, f"--tokenizer_path={tmp_path / 'elsewhere.json'}"]) == 0
    assert (tmp_path / "hf" / "tokenizer_config.json").is_file()
    # a variant neither GPT-2 nor Llama computes: refused by its knobs, no directory written
    qk = write_run(tmp_path / "qk", tok, tiny_gpt(vocab_size=tok.vocab_size, qk_norm=True))
    assert main(["export", f"--out_dir={qk}", f"--hf={tmp_path / 'hf-qk'}"]) == 2
    assert "qk_norm=True" in capsys.readouterr().err
    assert not (tmp_path / "hf-qk").exists()
    assert not (qk / "model.safetensors").exists()  # refused before anything is written


# ------------------------------------------------------------------------ lm-evaluation-harness


def loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """The Hugging Face libraries told to stay offline and to write under tmp_path, and any
    connection to an address off this machine made a failure (so "offline" is checked, not
    hoped for)."""
    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    # the libraries read those variables when imported, which may have happened already
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", True, raising=False)
    tried: list[object] = []
    connect = socket.socket.connect

    def local_only(sock, address):
        host = address[0] if isinstance(address, tuple) else ""
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not loopback(host):
            tried.append(address)
            raise OSError(f"test is offline: connection to {address} refused")
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", local_only)
    yield
    assert not tried, f"tried to reach the network: {tried}"


def local_task(tmp_path: Path) -> dict:
    """ITEMS as an lm-eval multiple-choice task read from a local JSON-lines file."""
    data = tmp_path / "items.jsonl"
    data.write_text("".join(json.dumps(item) + "\n" for item in ITEMS), encoding="utf-8")
    return {
        "task": "tiny_choices",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(tmp_path / "ds")},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{question}}",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{answer}}",
        "metric_list": [{"metric": "acc"}],
    }


def lm_eval_loglikelihoods(model: str, model_args: str, tmp_path: Path) -> list[list[float]]:
    """Per item, per choice: the log-likelihood lm-eval found."""
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    out = lm_eval.simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=[local_task(tmp_path)],
        task_manager=TaskManager(include_defaults=False),  # no index of lm-eval's own tasks
        device="cpu",
        log_samples=True,
        bootstrap_iters=0,
    )
    samples = sorted(out["samples"]["tiny_choices"], key=lambda s: s["doc_id"])
    return [[float(r[0][0]) for r in s["resps"]] for s in samples]


def expected_loglikelihoods(model, tok: RegexTokenizer) -> list[list[float]]:
    return [
        [continuation_logprob(model, tok, item["question"], " " + c) for c in item["choices"]]
        for item in ITEMS
    ]


def assert_same_loglikelihoods(got: list[list[float]], expected: list[list[float]]) -> None:
    assert [len(row) for row in got] == [len(item["choices"]) for item in ITEMS]
    flat = [x for row in expected for x in row]
    assert [x for row in got for x in row] == pytest.approx(flat, abs=1e-4)


def test_lm_eval_hf_on_an_export_equals_our_forward(run, offline, tmp_path):
    model, tok = load_run_model(run)
    got = lm_eval_loglikelihoods("hf", f"pretrained={run / 'hf'},dtype=float32", tmp_path)
    assert_same_loglikelihoods(got, expected_loglikelihoods(model, tok))


def test_the_llama_variant_exports_with_its_tokenizer_for_lm_eval(trained_tok, offline, tmp_path):
    """rope + rmsnorm + swiglu goes out as LlamaForCausalLM: AutoTokenizer still gives our ids
    (model_type llama), and lm-eval's `hf` model agrees with our forward."""
    model = tiny_gpt(seed=4, T=64, vocab_size=trained_tok.vocab_size, norm="rmsnorm",
                     pos_emb="rope", mlp="swiglu")  # fmt: skip
    root = write_run(tmp_path / "llama", trained_tok, model)
    assert main(["export", f"--out_dir={root}", f"--hf={root / 'hf'}"]) == 0
    config = json.loads((root / "hf" / "config.json").read_text(encoding="utf-8"))
    assert config["model_type"] == "llama"
    held_out_ids_equal(root / "hf", trained_tok)
    got = lm_eval_loglikelihoods("hf", f"pretrained={root / 'hf'},dtype=float32", tmp_path)
    assert_same_loglikelihoods(got, expected_loglikelihoods(load_run_model(root)[0], trained_tok))


# ------------------------------------------------------------------ lm-eval against mygpt2 serve

NAME = "eot-model"


def lm_eval_body(prompts: list) -> dict:
    """The body lm-eval 0.4's `local-completions` posts for log-likelihoods (its
    `_create_payload(..., generate=False)`; pinned against lm-eval's own code below)."""
    return {
        "model": NAME,
        "prompt": prompts,
        "temperature": 0,
        "max_tokens": 1,
        "logprobs": 1,
        "seed": 1234,
        "echo": True,
    }


@pytest.fixture(scope="module")
def server(run):
    """`mygpt2 serve`'s application on the end-of-text model, on a thread and a free port."""
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    from mygpt2.serve.app import Background, create_app
    from mygpt2.serve.engine import Engine

    model, tok = load_run_model(run)
    engine = Engine(model, tok, NAME)
    with Background(create_app(engine)) as running:
        yield running
    engine.close()


def test_lm_eval_sends_the_body_pinned_here():
    pytest.importorskip("lm_eval")
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    class Stub:
        model = NAME

    for prompts in ([[5, 6, 7]], ["some text", "more"]):
        sent = LocalCompletionsAPI._create_payload(Stub(), prompts, generate=False, seed=1234)
        assert sent == lm_eval_body(prompts)


def test_the_end_of_text_token_keeps_its_logprobs_entry(server, run):
    """lm-eval's request, for ids and for text: the generated end-of-text token is the last
    entry, so lm-eval's own parser (which drops that entry) scores the whole continuation."""
    httpx = pytest.importorskip("httpx")
    model, tok = load_run_model(run)
    eot = tok.eot_id
    contexts = [(item["question"], " " + item["choices"][0]) for item in ITEMS]
    for context, continuation in contexts:
        ctx = tok.encode(context)
        whole = tok.encode(context + continuation)
        logp = forward_logprobs(model, whole)
        assert int(logp[-1].argmax()) == eot  # the model's next token is end-of-text
        for prompt in (whole, context + continuation):
            got = httpx.post(server.url + "/v1/completions", json=lm_eval_body([prompt])).json()
            [choice] = got["choices"]
            lp = choice["logprobs"]
            assert choice["text"] == context + continuation  # echo; end-of-text adds no text
            assert choice["finish_reason"] == "stop"
            assert len(lp["tokens"]) == len(whole) + 1
            assert lp["tokens"][-1] == EOT and lp["text_offset"][-1] == len(choice["text"])
            assert lp["token_logprobs"][-1] == pytest.approx(float(logp[-1, eot]), abs=1e-5)
            assert list(lp["top_logprobs"][-1]) == [EOT]
            assert got["usage"] == {
                "prompt_tokens": len(whole),
                "completion_tokens": 1,
                "total_tokens": len(whole) + 1,
            }
            expected = sum(float(logp[p - 1, whole[p]]) for p in range(len(ctx), len(whole)))
            greedy = all(int(logp[p - 1].argmax()) == whole[p] for p in range(len(ctx), len(whole)))
            if pytest.importorskip("lm_eval"):
                from lm_eval.models.openai_completions import LocalCompletionsAPI

                [(score, is_greedy)] = LocalCompletionsAPI.parse_logprobs(got, [whole], [len(ctx)])
                assert score == pytest.approx(expected, abs=1e-4)
                assert is_greedy == greedy


def test_the_end_of_text_entry_streams_last_with_the_finish_reason(server, run):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    kwargs = dict(model=NAME, prompt="The year", max_tokens=20, temperature=0, logprobs=2)
    whole = client.completions.create(**kwargs).choices[0]
    assert whole.finish_reason == "stop" and whole.logprobs.tokens[-1] == EOT
    chunks = [c.choices[0] for c in client.completions.create(**kwargs, stream=True)]
    tokens = [t for c in chunks for t in c.logprobs.tokens]
    assert tokens == whole.logprobs.tokens
    assert [t for c in chunks for t in c.logprobs.token_logprobs] == pytest.approx(
        whole.logprobs.token_logprobs, abs=1e-6
    )
    last = chunks[-1]
    assert last.finish_reason == "stop" and last.logprobs.tokens[-1] == EOT
    assert "".join(c.text for c in chunks) == whole.text  # no text for end-of-text
    # without logprobs nothing changes but the count: the end-of-text token is generated
    plain = client.completions.create(model=NAME, prompt="The year", max_tokens=20, temperature=0)
    assert plain.choices[0].text == whole.text
    assert plain.usage.completion_tokens == len(whole.logprobs.tokens)


def test_lm_eval_local_completions_against_serve_equals_our_forward(run, server, offline, tmp_path):
    """lm-eval itself, `--model local-completions` against the server, the tokenizer from the
    export (lm-eval needs one to cut context from continuation)."""
    model, tok = load_run_model(run)
    args = (
        f"model={NAME},base_url={server.url}/v1/completions,tokenizer_backend=huggingface,"
        f"tokenizer={run / 'hf'},max_length={model.config.T},max_retries=1"
    )
    got = lm_eval_loglikelihoods("local-completions", args, tmp_path)
    assert_same_loglikelihoods(got, expected_loglikelihoods(model, tok))
