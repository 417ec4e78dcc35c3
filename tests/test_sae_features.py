"""Browsing SAE features (mygpt2.sae.features): each number of the report computed again here
by hand from the model's cached activations (run_with_cache on the whole rows, the encoder
written out), the windows' activations read off those, the histogram counted with numpy, and
the unembedding's direct path measured by adding the direction at the hook and reading the
change the model itself gives downstream. Then the page (escaped), search, and the command."""

from __future__ import annotations

import html
import json
import math
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from models import tiny_gpt

from mygpt2.cli import main
from mygpt2.commands.args import load_config
from mygpt2.errors import MyGPT2Error
from mygpt2.prepare import ensure_prepared
from mygpt2.sae import SAE, SAEConfig, load, save
from mygpt2.sae.features import HIST_EDGES, browse, check_features, quoted, rows_of, search
from mygpt2.sae.features_html import page
from mygpt2.sample import load_model

SPECIAL = {7: "<script>alert(1)</script>", 8: "a&b", 9: '"q"', 10: "\n"}


class StandInTokenizer:
    """Token i is the text `t{i} ` (a few are HTML-hostile); ids from 50 up are past its
    vocabulary (a padded model vocabulary)."""

    vocab_size = 50

    def decode_bytes(self, ids: list[int]) -> bytes:
        return "".join(SPECIAL.get(i, f"t{i} ") for i in ids).encode("utf-8")


def random_sae(hook: str, d_in: int, d_sae: int = 16, seed: int = 0) -> SAE:
    """A standard (ReLU) SAE with random weights that fires on some tokens and not on others."""
    torch.manual_seed(seed)
    sae = SAE(SAEConfig(d_in=d_in, d_sae=d_sae, architecture="standard", hook_name=hook))
    with torch.no_grad():
        sae.W_enc.normal_(0, 1)
        sae.b_enc.zero_()  # zero-mean pre-activations: ReLU fires on about half the tokens
        sae.b_dec.normal_(0, 0.001)
    return sae


def by_hand(model, sae, rows: torch.Tensor) -> torch.Tensor:
    """(tokens, d_sae) feature activations: the cached activation, flattened per token, then
    ReLU((x - b_dec) W_enc + b_enc)."""
    hook = sae.cfg.hook_name
    _, cache = model.run_with_cache(rows, names=hook)
    x = cache[hook].reshape(rows.numel(), -1)
    with torch.no_grad():
        return torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)


@pytest.mark.parametrize("hook", ["blocks.0.hook_resid_post", "blocks.1.attn.hook_z"])
def test_report_numbers_match_a_hand_computation(hook):
    model = tiny_gpt(seed=1, T=16)
    sae = random_sae(hook, 32)
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 61, (16 * 9 + 5,), generator=g).numpy()  # a tail of 5 dropped
    chosen = [3, 0, 11]
    report = browse(model, sae, tokens, StandInTokenizer(), chosen, top=4, before=3, after=2,
                    batch_rows=4)  # fmt: skip
    rows = torch.as_tensor(tokens[: 16 * 9]).view(9, 16)
    f = by_hand(model, sae, rows)
    assert report["tokens"] == 144 and report["rows"] == 9 and report["context"] == 16
    assert [x["id"] for x in report["features"]] == chosen
    for entry in report["features"]:
        col = f[:, entry["id"]]
        fired = col[col > 0]
        assert 0 < entry["count"] < 144, "pick a bias that makes features fire sometimes"
        assert entry["count"] == fired.numel()
        assert entry["density"] == pytest.approx(fired.numel() / 144)
        assert entry["max"] == pytest.approx(float(col.max()), rel=1e-5)
        assert entry["mean"] == pytest.approx(float(fired.mean()), rel=1e-5)
        logs = np.clip(np.log10(fired.double().numpy()), -4, 4 - 1e-9)
        hist, _ = np.histogram(logs, bins=64, range=(-4, 4))
        assert entry["histogram"] == hist.tolist()
        # top contexts: the 4 largest activations, largest first, each window within its row
        # (equal values can come in either order: position 0 of two rows with the same token)
        best = col.sort(descending=True).values[:4].tolist()
        assert [c["activation"] for c in entry["contexts"]] == pytest.approx(best, rel=1e-5)
        assert len({(c["row"], c["pos"]) for c in entry["contexts"]}) == 4
        for c in entry["contexts"]:
            lo = max(0, c["pos"] - 3)
            hi = min(16, c["pos"] + 3)
            assert c["ids"] == rows[c["row"], lo:hi].tolist()
            assert c["at"] == c["pos"] - lo and len(c["tokens"]) == hi - lo
            want = col[c["row"] * 16 + lo : c["row"] * 16 + hi]
            assert c["acts"] == pytest.approx(want.tolist(), abs=1e-4)
            assert c["activation"] == pytest.approx(float(col[c["row"] * 16 + c["pos"]]), 1e-5)


@pytest.mark.parametrize(
    ("hook", "downstream", "d_in"),
    [
        ("blocks.1.hook_resid_mid", "blocks.1.hook_resid_mid", 32),
        ("blocks.0.attn.hook_z", "blocks.0.hook_attn_out", 32),
        ("blocks.1.mlp.hook_post", "blocks.1.hook_mlp_out", 128),
    ],
)
def test_promoted_tokens_are_the_direct_path_through_the_head(hook, downstream, d_in):
    # the direction's effect on the residual stream, measured: add it at the hook, read the
    # change at the point where that hook's output joins the stream; then the head's weight
    model = tiny_gpt(seed=2, T=16)
    sae = random_sae(hook, d_in, seed=4)
    report = browse(model, sae, list(range(40)), StandInTokenizer(), [5, 9], n_logits=6)
    assert "direct path" in report["logits"]
    ids = list(range(8))
    for entry in report["features"]:
        d = sae.W_dec[entry["id"]].detach()
        _, plain = model.run_with_cache(ids, names=downstream)
        with model.hooks([(hook, lambda x, n, d=d: x + d.reshape(x.shape[2:]))]):
            _, moved = model.run_with_cache(ids, names=downstream)
        delta = (moved[downstream] - plain[downstream])[0, 0]  # the same at every position
        with torch.no_grad():
            logits = delta @ model.lm_head.weight[:61].T
        top = logits.topk(6)
        assert [p["id"] for p in entry["promotes"]] == top.indices.tolist()
        assert [p["logit"] for p in entry["promotes"]] == pytest.approx(
            top.values.tolist(), abs=1e-3
        )
        bottom = logits.topk(6, largest=False)
        assert [p["id"] for p in entry["suppresses"]] == bottom.indices.tolist()
        assert (
            entry["promotes"][0]["token"]
            == StandInTokenizer().decode_bytes([top.indices[0].item()]).decode()
            if top.indices[0] < 50
            else f"#{top.indices[0].item()}"
        )


def test_a_hook_outside_the_residual_basis_has_no_token_lists():
    model = tiny_gpt(seed=2, T=16)
    sae = random_sae("blocks.0.attn.hook_q", 32)
    report = browse(model, sae, list(range(40)), StandInTokenizer(), [1])
    assert report["features"][0]["promotes"] == [] and "no direct path" in report["logits"]


def test_rows_and_feature_choices():
    assert rows_of(list(range(10)), 4).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert rows_of([1, 2, 3], 4).tolist() == [[1, 2, 3]]  # shorter than a row: the one row
    assert check_features(None, 3) == [0, 1, 2]
    assert check_features([2, 0, 2], 3) == [2, 0]
    for bad in ([3], [-1]):
        with pytest.raises(MyGPT2Error, match="out of range: the SAE has 3 features, 0 to 2"):
            check_features(bad, 3)
    with pytest.raises(MyGPT2Error, match="a feature is a whole number, got True"):
        check_features([True], 3)
    with pytest.raises(MyGPT2Error, match="empty"):
        rows_of([], 4)


def test_a_misfit_sae_is_refused_naming_hook_and_width():
    model = tiny_gpt(seed=0)
    with pytest.raises(MyGPT2Error, match=r"d_in=48 .* holds 32"):
        browse(model, random_sae("blocks.0.hook_resid_post", 48), [1, 2, 3], StandInTokenizer())


def fake_report() -> dict:
    def ctx(token: str, act: float) -> dict:
        return {"tokens": ["x", token, "y"], "acts": [0.0, act, 0.1], "at": 1, "activation": act}

    features = [
        {"id": 0, "contexts": [ctx(" the", 2.0)], "promotes": [{"token": " cat", "logit": 1.0}]},
        {"id": 1, "contexts": [ctx(" the", 5.0), ctx("<b>", 1.0)], "promotes": []},
        {"id": 2, "contexts": [ctx("The", 1.0)], "promotes": [{"token": " the", "logit": 3.0}]},
        {"id": 12, "contexts": [], "promotes": [{"token": " the", "logit": 4.0}]},
    ]
    return {"features": features}


def test_search_by_id_and_by_token():
    report = fake_report()
    assert search(report, "12") == [12] and search(report, "#2") == [2]
    assert search(report, "7") == []  # an id not in the report
    # a token: the features firing on it, strongest first, then those promoting it
    assert search(report, " the") == [1, 0, 12, 2]
    assert search(report, "<b>") == [1]
    assert search(report, "THE") == [1, 0, 2, 12]  # no exact match: case and spaces ignored
    assert search(report, " cat") == [0]
    assert search(report, "nothing") == [] and search(report, "") == []


def test_the_page_escapes_every_token_and_is_self_contained():
    model = tiny_gpt(seed=1, T=16)
    sae = random_sae("blocks.0.hook_resid_post", 32)
    tokens = [7, 8, 9, 10] * 20  # every token HTML-hostile
    report = browse(model, sae, tokens, StandInTokenizer(), top=3)
    report["data"] = "<img src=x onerror=alert(1)>"
    doc = page(report, title="features <of> x")
    assert "<script>alert" not in doc and "<img" not in doc
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in doc and "a&amp;b" in doc
    assert "&lt;img src=x onerror=alert(1)&gt;" in doc
    assert doc.count("<script>") == 1  # the page's own search box
    assert "http" not in doc and not re.search(r"<(img|link|iframe|script src)", doc)
    live = [f for f in report["features"] if f["count"]]
    assert doc.count('<section class="feature"') == len(live) > 0
    for f in live:
        assert f'id="f{f["id"]}"' in doc and len(f["contexts"]) == 3
    dead = [f["id"] for f in report["features"] if not f["count"]]
    if dead:
        assert f"never fired ({len(dead)})" in doc


def test_histogram_edges_are_eight_per_decade():
    assert len(HIST_EDGES) == 65
    assert HIST_EDGES[0] == pytest.approx(1e-4) and HIST_EDGES[-1] == pytest.approx(1e4)
    assert HIST_EDGES[8] / HIST_EDGES[0] == pytest.approx(10)
    assert math.isclose(HIST_EDGES[32], 1.0)


# ---------------------------------------------------------------- mygpt2 inspect features
@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    from test_steer import byte_run

    root = byte_run(tmp_path_factory.mktemp("features"))
    text = root / "text.txt"
    text.write_text("ROMEO: hello there, friend! <b>world</b> & more\n" * 120, encoding="utf-8")
    sae = random_sae("blocks.0.hook_resid_post", 32, d_sae=8, seed=3)
    save(sae, root / "sae")
    return SimpleNamespace(root=root, text=text, sae_dir=root / "sae")


def inspect_cli(run, capsys, *flags: str) -> tuple[int, str, str]:
    base = ["inspect", "features", f"--out_dir={run.root}", f"--sae_dir={run.sae_dir}"]
    code = main([*base, f"--data={run.text}", "--device=cpu", *flags])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_inspect_features_writes_the_report_the_api_gives(cli_run, capsys, tmp_path):
    out = tmp_path / "browse"
    code, printed, _ = inspect_cli(cli_run, capsys, f"--out={out}", "--features=0-2,5",
                                   "--tokens=300", "--contexts=3")  # fmt: skip
    assert code == 0
    report = json.loads((out / "features.json").read_text(encoding="utf-8"))
    assert [f["id"] for f in report["features"]] == [0, 1, 2, 5]
    assert report["sae_dir"] == str(cli_run.sae_dir.resolve()) and "text.txt" in report["data"]
    # the same numbers from the API on the validation tokens the command read
    model, tok = load_model(load_config([f"--out_dir={cli_run.root}", "--device=cpu"]))
    cfg = load_config([f"--out_dir={cli_run.root}", f"--data={cli_run.text}"])
    _, val, _ = ensure_prepared(cfg, tok, progress=False)
    want = browse(model, load(cli_run.sae_dir), np.asarray(val[:300]), tok, [0, 1, 2, 5], top=3)
    assert report["tokens"] == want["tokens"] and report["context"] == 64
    for got, ref in zip(report["features"], want["features"], strict=True):
        assert got["count"] == ref["count"] and got["histogram"] == ref["histogram"]
        assert got["contexts"] == ref["contexts"] and got["promotes"] == ref["promotes"]
    assert "features of blocks.0.hook_resid_post" in printed and "wrote" in printed
    doc = (out / "index.html").read_text(encoding="utf-8")
    hostile = {t for f in report["features"] for c in f["contexts"] for t in c["tokens"]}
    hostile = {t for t in hostile if set(t) & set("<>&")}
    assert hostile and "<b>world" not in doc and "</b> &" not in doc
    assert all(html.escape(t.replace("\n", "↵"), quote=True) in doc for t in hostile)


def test_inspect_features_bad_input_is_one_line_and_exit_2(cli_run, capsys, tmp_path):
    misfit = tmp_path / "misfit"
    save(random_sae("blocks.0.hook_resid_post", 48), misfit)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    out = f"--out={tmp_path / 'o'}"
    cases = [
        ([out, "--features=8"], "feature 8 is out of range: the SAE has 8 features, 0 to 7"),
        ([out, "--features=1,x"], "--features takes ids and ranges"),
        ([out, "--features=5-2"], "--features takes ids and ranges"),
        ([out, "--tokens=0"], "--tokens takes a whole number of at least 1"),
        ([out, f"--sae_dir={misfit}"], "d_in=48 values per token, but this model's"),
        ([out, f"--sae_dir={tmp_path}"], str(tmp_path)),
        ([f"--out={a_file}"], "is a file"),
        ([], "needs --sae_dir DIR, --data SRC and --out DIR"),
    ]
    for flags, message in cases:
        code, _, err = inspect_cli(cli_run, capsys, *flags)
        errors = [line for line in err.splitlines() if "error:" in line]
        assert code == 2 and len(errors) == 1 and message in errors[0], (flags, err)
        assert "Traceback" not in err
    assert not (tmp_path / "o").exists()  # nothing half-written
    # the features flags belong to the features view, --data too
    assert main(["inspect", "tokens", "--text=hi", f"--sae_dir={cli_run.sae_dir}"]) == 2
    assert "--sae_dir is for mygpt2 inspect features" in capsys.readouterr().err
    assert main(["inspect", "tokens", "--text=hi", f"--data={cli_run.text}"]) == 2
    assert "--data is for mygpt2 inspect features" in capsys.readouterr().err


def test_tokens_are_quoted_for_people_and_lone_bytes_written_as_bytes():
    assert quoted(" the") == "' the'" and quoted("a\nb\t") == "'a\\nb\\t'"
    assert quoted("\x13") == "'\\x13'" and quoted("é<") == "'é<'"

    class Bytes(StandInTokenizer):
        def decode_bytes(self, ids):
            return bytes([0xC3]) if ids == [3] else super().decode_bytes(ids)

    model = tiny_gpt(seed=2, T=16)
    sae = random_sae("blocks.1.hook_resid_mid", 32, seed=4)
    report = browse(model, sae, list(range(40)), Bytes(), [5], n_logits=61)
    tokens = {p["id"]: p["token"] for p in report["features"][0]["promotes"]}
    assert tokens[3] == "\\xc3" and tokens[55] == "#55" and tokens[8] == "a&b"
