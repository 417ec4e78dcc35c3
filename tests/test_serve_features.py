"""SAEs behind `mygpt2 serve` (mygpt2.serve.features): the completions API's `steer` extension
field against `mygpt2.generate(steer=...)` and plain generation, its bad input as 400s naming
`steer` (streamed requests too, before any event), and the Features tab's routes against the
report `mygpt2 inspect features` wrote and `mygpt2.sae.features.search`."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

from test_serve import make_checkpoint  # noqa: E402

from mygpt2.cli import main  # noqa: E402
from mygpt2.commands.args import load_config  # noqa: E402
from mygpt2.commands.serve import register_saes  # noqa: E402
from mygpt2.errors import MyGPT2Error  # noqa: E402
from mygpt2.generate import generate  # noqa: E402
from mygpt2.sae import SAE, SAEConfig, load, save  # noqa: E402
from mygpt2.sae.features import search  # noqa: E402
from mygpt2.sample import load_model  # noqa: E402
from mygpt2.serve.app import Background, create_app  # noqa: E402
from mygpt2.serve.engine import Engine  # noqa: E402
from mygpt2.serve.features import SAEs  # noqa: E402

PROMPT = "ROMEO: hello"
HOOK = "blocks.0.hook_resid_post"


def features_dir(run_dir: Path, sae_dir: Path, out: Path) -> Path:
    """What `mygpt2 inspect features` writes for the run's SAE on a small text."""
    text = run_dir / "text.txt"
    text.write_text("ROMEO: héllo there, friend! wörld <b>&</b>\n" * 60, encoding="utf-8")
    argv = ["inspect", "features", f"--out_dir={run_dir}", f"--sae_dir={sae_dir}"]
    assert main([*argv, f"--data={text}", f"--out={out}", "--device=cpu", "--contexts=4"]) == 0
    return out


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """A server with one SAE registered by --features (its report) and one by --sae_dir."""
    root = make_checkpoint(tmp_path_factory.mktemp("serve-sae"))
    torch.manual_seed(0)
    sae = SAE(SAEConfig(d_in=32, d_sae=24, k=4, hook_name=HOOK))
    with torch.no_grad():
        sae.W_enc.normal_(0, 1)
    save(sae, root / "sae")
    save(SAE(SAEConfig(d_in=32, d_sae=8, k=2, hook_name="blocks.1.hook_resid_mid")), root / "mid")
    report_dir = features_dir(root, root / "sae", root / "browse")
    model, tok = load_model(load_config([f"--out_dir={root}", "--device=cpu"]))
    saes = register_saes(model, {"features": str(report_dir), "sae_dir": str(root / "mid")})
    engine = Engine(model, tok, "tiny", saes=saes)
    with Background(create_app(engine)) as server:
        yield SimpleNamespace(
            url=server.url, engine=engine, model=model, tok=tok, root=root, saes=saes,
            sae=load(root / "sae"), report_dir=report_dir,
        )  # fmt: skip
    engine.close()


def complete(ui, **body) -> httpx.Response:
    return httpx.post(ui.url + "/v1/completions", json={"prompt": PROMPT, **body}, timeout=60)


def test_steer_field_is_generate_with_steer(ui):
    ids = ui.tok.encode_ordinary(PROMPT)
    name = str(ui.root / "sae")  # any path naming the registered SAE
    plain = complete(ui, max_tokens=30, temperature=0).json()["choices"][0]["text"]
    zero = [{"sae": name, "feature": 3, "alpha": 0.0}]
    assert (
        complete(ui, max_tokens=30, temperature=0, steer=zero).json()["choices"][0]["text"] == plain
    )
    steer = [{"sae": name, "feature": 3, "alpha": 12.0}, {"sae": name, "feature": 7, "alpha": -6}]
    want = generate(ui.model, ids, 30, temperature=0, steer=[(ui.sae, 3, 12.0), (ui.sae, 7, -6.0)])
    want_text = ui.tok.decode([t for t in want[0] if t != ui.tok.eot_id])
    got = complete(ui, max_tokens=30, temperature=0, steer=steer).json()["choices"][0]["text"]
    assert got == want_text and got != plain
    # OpenAI's client sends it as an extra body field; streamed pieces join to the same text
    client = openai.OpenAI(base_url=ui.url + "/v1", api_key="unused", max_retries=0)
    pieces = client.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=30, temperature=0, stream=True,
        extra_body={"steer": steer},
    )  # fmt: skip
    assert "".join(p.choices[0].text for p in pieces if p.choices) == want_text
    # an SAE registered with --sae_dir, by the name it was given
    mid = [{"sae": str(ui.root / "mid"), "feature": 1, "alpha": 3.0}]
    assert complete(ui, max_tokens=5, temperature=0, steer=mid).status_code == 200


def test_bad_steer_is_a_400_naming_steer_before_any_token(ui):
    name = str(ui.root / "sae")
    ui.saes.saes["misfit"] = SAE(SAEConfig(d_in=48, d_sae=4, k=1, hook_name=HOOK))  # a stale one
    cases = [
        (
            {"sae": name, "feature": 24, "alpha": 1},
            "feature 24 is out of range: the SAE has 24 features",
        ),
        ({"sae": name, "feature": -1, "alpha": 1}, "feature -1 is out of range"),
        ({"sae": "elsewhere", "feature": 0, "alpha": 1}, "no SAE 'elsewhere' is registered"),
        ({"sae": name, "feature": 1.5, "alpha": 1}, "'feature' is an integer"),
        ({"sae": name, "feature": 1, "alpha": "x"}, "'alpha' is a number"),
        ({"sae": name, "feature": 1, "alpha": 1, "beta": 2}, 'expected {"sae"'),
        ({"sae": "misfit", "feature": 0, "alpha": 1}, "d_in=48 values per token, but this"),
    ]
    try:
        for stream in (False, True):
            for entry, message in cases:
                r = complete(ui, max_tokens=5, stream=stream, steer=[entry])
                assert r.status_code == 400, (entry, r.text)
                error = r.json()["error"]
                assert error["param"] == "steer" and message in error["message"], error
        assert "expected a list" in complete(ui, steer={"sae": name}).json()["error"]["message"]
    finally:
        del ui.saes.saes["misfit"]


def test_features_routes_serve_the_report(ui):
    report = json.loads((ui.report_dir / "features.json").read_text(encoding="utf-8"))
    listing = httpx.get(ui.url + "/api/saes").json()["saes"]
    assert [(s["hook"], s["d_sae"], s["report"]) for s in listing] == [
        ("blocks.1.hook_resid_mid", 8, False),
        (HOOK, 24, True),
    ]
    name = next(s["sae"] for s in listing if s["report"])
    assert name == str((ui.root / "sae").resolve())  # the report's SAE, by its path

    def find(q: str) -> list[int]:
        r = httpx.get(ui.url + "/api/features", params={"sae": name, "q": q})
        assert r.status_code == 200, r.text
        return [f["id"] for f in r.json()["features"]]

    assert find("3") == [3] and find("#5") == [5]
    token = next(c["tokens"][c["at"]] for f in report["features"] for c in f["contexts"])
    assert find(token) == search(report, token, limit=50) and len(find(token)) > 0
    strongest = sorted((f for f in report["features"] if f["count"]), key=lambda f: -f["max"])
    assert find("") == [f["id"] for f in strongest[:50]]
    one = httpx.get(ui.url + "/api/features/3", params={"sae": name}).json()
    assert {k: one[k] for k in report["features"][3]} == report["features"][3]
    assert one["histogram_edges"] == report["histogram_edges"]
    r = httpx.get(ui.url + "/api/features/99", params={"sae": name})
    assert r.status_code == 404 and "out of range (0 to 23)" in r.json()["error"]["message"]
    assert httpx.get(ui.url + "/api/features/x", params={"sae": name}).status_code == 400
    r = httpx.get(ui.url + "/api/features", params={"sae": str(ui.root / "mid"), "q": "1"})
    assert r.status_code == 404 and "no feature report" in r.json()["error"]["message"]


def test_serve_refuses_a_misfit_or_missing_report_at_start(ui, tmp_path):
    misfit = tmp_path / "misfit"
    save(SAE(SAEConfig(d_in=32, d_sae=4, k=1, hook_name="blocks.9.hook_resid_post")), misfit)
    with pytest.raises(MyGPT2Error, match="which this 2-layer model lacks"):
        register_saes(ui.model, {"sae_dir": str(misfit)})
    with pytest.raises(MyGPT2Error, match=r"holds no features\.json"):
        register_saes(ui.model, {"features": str(tmp_path)})
    (tmp_path / "features.json").write_text("{}", encoding="utf-8")
    with pytest.raises(MyGPT2Error, match="is not a report of mygpt2 inspect features"):
        register_saes(ui.model, {"features": str(tmp_path)})
    assert register_saes(ui.model, {}) is None
    assert isinstance(register_saes(ui.model, {"sae_dir": str(ui.root / "mid")}), SAEs)
