"""The playground in a real browser: headless Chromium (Debian's `chromium`, driven by the
`playwright` package through `executable_path`; no browser is downloaded) loads the page
against a small random model, generates, switches to the tokens, attention, lens and training
views, stops a generation, and takes the screenshots the README shows.

Skipped with a reason where no Chromium is installed, except under CI=true, where it must run
(`.ci/run` installs it). `MYGPT2_SCREENSHOTS=DIR` also copies the screenshots to DIR, and
`MYGPT2_SCREENSHOT_RUN=OUT_DIR` serves that run's checkpoint and curves instead of the random
model (how docs/images/serve_*.png were made; see docs/SERVE.md).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from test_serve import Slow, make_checkpoint, wait_for  # noqa: E402

from mygpt2.commands.args import load_config  # noqa: E402
from mygpt2.sample import load_model  # noqa: E402
from mygpt2.serve.app import Background, create_app  # noqa: E402
from mygpt2.serve.engine import Engine  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
IN_CI = os.environ.get("CI", "").lower() == "true"


def browser_or_skip():
    """Playwright's sync API and a Chromium to drive; under CI a missing one fails."""
    missing = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "the playwright package is not installed (pip install -e '.[dev]')"
    if missing is None and CHROMIUM is None:
        missing = "no chromium on PATH (Debian: apt-get install chromium)"
    if missing:
        if IN_CI:
            pytest.fail(f"browser tests must run in CI: {missing}")
        pytest.skip(missing)
    return sync_playwright


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """The page on a live server, the engine behind it, the run the training view shows,
    where screenshots go, and whether it is a real run (MYGPT2_SCREENSHOT_RUN)."""
    sync_playwright = browser_or_skip()
    given = os.environ.get("MYGPT2_SCREENSHOT_RUN")
    run_dir = Path(given) if given else make_checkpoint(tmp_path_factory.mktemp("browser"))
    model, tok = load_model(load_config([f"--out_dir={run_dir}", "--device=cpu"]))
    engine = Engine(model, tok, run_dir.name if given else "tiny")
    shots = tmp_path_factory.mktemp("screenshots")
    with Background(create_app(engine, out_dir=str(run_dir))) as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 820})
        page.goto(server.url + "/")
        yield SimpleNamespace(
            page=page, engine=engine, run_dir=run_dir, shots=shots, url=server.url,
            real=bool(given),
        )  # fmt: skip
        browser.close()
    engine.close()
    copy_to = os.environ.get("MYGPT2_SCREENSHOTS")
    if copy_to:
        for png in shots.glob("*.png"):
            shutil.copy(png, Path(copy_to) / png.name)


def screenshot(ui, name: str) -> None:
    path = ui.shots / f"serve_{name}.png"
    ui.page.screenshot(path=str(path))
    assert path.stat().st_size > 10_000  # a picture, not a blank page


def test_generate_streams_the_same_text_the_api_gives(ui):
    page, _engine = ui.page, ui.engine
    page.wait_for_function(
        "document.querySelector('#model-info').textContent.includes('parameters')"
    )
    prompt = "ROMEO:" if ui.real else "ROMEO: héllo"
    page.fill("#prompt", prompt)
    page.fill("#temperature", "0")
    page.fill("#max_tokens", "60")
    page.click("#generate")
    page.wait_for_function(
        "document.querySelector('#gen-status').textContent.includes('tokens in')"
    )
    shown = page.inner_text("#output .generated")
    body = {"prompt": prompt, "max_tokens": 60, "temperature": 0}
    expected = httpx.post(ui.url + "/v1/completions", json=body).json()["choices"][0]["text"]
    assert shown == expected and len(shown) > 0
    assert page.inner_text("#output .prompt") == prompt
    screenshot(ui, "generate")


def test_tokens_view_shades_tokens_and_shows_alternatives(ui):
    page, engine = ui.page, ui.engine
    text = page.inner_text("#output")
    page.click("button[data-view=tokens]")
    page.wait_for_selector("#token-text .tok")
    spans = page.query_selector_all("#token-text .tok")
    assert len(spans) == min(len(engine.tok.encode_ordinary(text)), engine.model.config.T)
    spans[2].hover()
    assert "id " in page.inner_text("#tip") and page.is_visible("#tip")
    spans[4].click()
    assert len(page.query_selector_all("#token-detail .alt")) == 5
    assert "mean loss" in page.inner_text("#tokens-status")
    screenshot(ui, "tokens")


def test_attention_grid_and_one_head_large(ui):
    page, engine = ui.page, ui.engine
    page.click("button[data-view=attention]")
    page.wait_for_selector("#attn-grid figure")
    cfg = engine.model.config
    assert len(page.query_selector_all("#attn-grid figure")) == cfg.n_layers * cfg.n_heads
    page.click(f"#attn-grid figure[data-layer='{cfg.n_layers - 1}'][data-head='1']")
    assert f"layer {cfg.n_layers - 1}, head 1" in page.inner_text("#attn-large")
    assert page.query_selector("#attn-large canvas") is not None
    screenshot(ui, "attention")


def test_lens_table_has_a_row_per_layer(ui):
    page, engine = ui.page, ui.engine
    page.click("button[data-view=lens]")
    page.wait_for_selector("#lens-table td")
    rows = page.query_selector_all("#lens-table tr")
    assert len(rows) == 1 + engine.model.config.n_layers
    screenshot(ui, "lens")


def test_training_view_follows_a_run_as_it_writes(ui, tmp_path):
    page, _engine = ui.page, ui.engine
    run_dir = ui.run_dir
    if not ui.real:  # a run writing its metrics.jsonl, row by row
        run_dir = tmp_path
        rows = [
            {"kind": "train", "step": s, "loss": 6 * 0.97**s, "lr": 1e-3, "grad_norm": 1.0,
             "tokens": 512 * s}
            for s in range(1, 40)
        ]  # fmt: skip
        rows += [{"kind": "eval", "step": 20, "val_loss": 4.0, "tokens": 10240}]
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    page.click("button[data-view=training]")
    page.fill("#run-dir", str(run_dir))
    page.click("#watch")
    page.wait_for_selector("#charts .chart canvas")
    assert len(page.query_selector_all("#charts .chart")) >= 3
    before = page.inner_text("#training-status")
    if not ui.real:
        with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"kind": "health", "step": 40, "update_ratio": 0.002}) + "\n")
        page.wait_for_function(
            "document.querySelector('#training-status').textContent.startsWith('41 rows')",
            timeout=10_000,
        )
        assert "health: update_ratio" in page.inner_text("#charts")
        assert before.startswith("40 rows")
    screenshot(ui, "training")


def test_training_view_compares_several_runs(ui, tmp_path):
    from test_compare import write_run

    page = ui.page
    a = write_run(tmp_path / "run-a", [(2, 3.0, 1.5), (4, 2.5, 1.2)], seconds_per_step=0.25)
    b = write_run(tmp_path / "run-b", [(2, 3.2, 1.6), (4, 2.9, 1.4)], seconds_per_step=1.0)
    page.click("button[data-view=training]")
    page.fill("#run-dir", f"{a}, {b}")
    page.click("#watch")
    page.wait_for_selector("#compare-table tbody tr")
    legend = page.query_selector_all("#compare-legend .entry")
    assert [e.inner_text() for e in legend] == [str(a), str(b)]
    cells = [r.inner_text().split("\t") for r in page.query_selector_all("#compare-table tbody tr")]
    assert [c[0] for c in cells] == [str(a), str(b)]  # one row per run, same order as entered
    assert cells[0][3:5] == ["2.5000", "2.5000"] and cells[1][4] == "2.9000"  # final, best
    page.select_option("#x-axis", "seconds")
    titles = page.inner_text("#charts")
    assert "validation loss" in titles and "training loss" in titles
    assert len(page.query_selector_all("#charts .chart canvas")) == 2
    screenshot(ui, "compare")
    # the link `mygpt2 compare` prints opens the same view
    page.goto(f"{ui.url}/?runs={a},{b}")
    page.wait_for_selector("#compare-table tbody tr")
    assert page.is_visible("#view-training") and page.input_value("#run-dir") == f"{a},{b}"


def test_stop_button_cancels_the_generation(ui):
    page, engine = ui.page, ui.engine
    page.click("button[data-view=generate]")
    page.fill("#max_tokens", "1000")
    page.fill("#temperature", "1")
    cancelled = engine.stats["cancelled"]
    with Slow(engine, 0.01):
        page.click("#generate")
        page.wait_for_function(
            "document.querySelector('#output .generated').textContent.length > 5"
        )
        page.click("#stop")
        page.wait_for_function(
            "document.querySelector('#gen-status').textContent.startsWith('stopped after')"
        )
        assert wait_for(lambda: engine.stats["cancelled"] == cancelled + 1)
