"""Browsing SAE features (mygpt2.sae.features): each number of the report computed again here
by hand from the model's cached activations (run_with_cache on the whole rows, the encoder
written out), the windows' activations read off those, the histogram counted with numpy, and
the unembedding's direct path measured by adding the direction at the hook and reading the
change the model itself gives downstream. Then the page (escaped), search, and the command."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from models import tiny_gpt

from mygpt2.errors import MyGPT2Error
from mygpt2.sae import SAE, SAEConfig
from mygpt2.sae.features import HIST_EDGES, browse, check_features, rows_of, search
from mygpt2.sae.features_html import page

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
    for bad in ([3], [-1], [True]):
        with pytest.raises(MyGPT2Error, match="out of range: the SAE has 3 features, 0 to 2"):
            check_features(bad, 3)
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
