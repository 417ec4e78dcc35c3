"""The playground's Features tab and steer field in a real browser (Debian's chromium through
playwright, as tests/test_serve_browser.py drives it): search a feature by id and by token and
see what the report holds, then steer a generation with it and get what the API gives.

Skipped with a reason where no Chromium is installed, except under CI=true, where it must run.
`MYGPT2_SCREENSHOTS=DIR` copies the screenshot to DIR.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from test_serve_browser import CHROMIUM, browser_or_skip  # noqa: E402
from test_serve_features import ui  # noqa: E402, F401  (the server with SAEs, module-scoped)

from mygpt2.sae.features import quoted, search  # noqa: E402


@pytest.fixture(scope="module")
def page(ui, tmp_path_factory):  # noqa: F811
    sync_playwright = browser_or_skip()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        tab = browser.new_page(viewport={"width": 1280, "height": 820})
        tab.goto(ui.url + "/")
        tab.wait_for_function("document.querySelector('#feature-sae').options.length > 0")
        yield tab
        browser.close()


def report_of(server) -> dict:
    return json.loads((server.report_dir / "features.json").read_text(encoding="utf-8"))


def test_features_tab_finds_a_feature_by_id_and_shows_its_contexts(ui, page, tmp_path):  # noqa: F811
    report = report_of(ui)
    page.click("button[data-view=features]")
    page.wait_for_selector("#feature-list button")
    strongest = sorted((f for f in report["features"] if f["count"]), key=lambda f: -f["max"])
    shown = [
        int(b.get_attribute("data-id")) for b in page.query_selector_all("#feature-list button")
    ]
    assert shown == [f["id"] for f in strongest[:50]]
    f = next(f for f in report["features"] if f["count"] and f["id"] != strongest[0]["id"])
    page.fill("#feature-query", str(f["id"]))
    page.press("#feature-query", "Enter")
    page.wait_for_function(
        f"document.querySelector('#feature-detail h3')?.textContent === 'feature {f['id']}'"
    )
    lines = page.query_selector_all("#feature-contexts .context")
    assert len(lines) == len(f["contexts"]) > 0
    for line, c in zip(lines, f["contexts"], strict=True):
        marks = line.query_selector_all("mark")
        assert len(marks) == 1 and marks[0].text_content() == c["tokens"][c["at"]].replace(
            "\n", "↵"
        )
        words = line.query_selector_all("span:not(.act), mark")
        assert "".join(w.text_content() for w in words) == "".join(c["tokens"]).replace("\n", "↵")
    assert f"({f['count']} tokens)" in page.inner_text("#feature-detail .hint")
    rows = page.query_selector_all("#feature-detail table")[0].query_selector_all("tr")
    assert [r.query_selector("td").text_content() for r in rows] == [
        quoted(p["token"]) for p in f["promotes"]
    ]
    path = tmp_path / "serve_features.png"
    page.screenshot(path=str(path))
    assert path.stat().st_size > 10_000
    copy_to = os.environ.get("MYGPT2_SCREENSHOTS")
    if copy_to:
        shutil.copy(path, Path(copy_to) / path.name)


def test_features_tab_finds_features_by_token(ui, page):  # noqa: F811
    report = report_of(ui)
    token = next(
        c["tokens"][c["at"]] for f in report["features"] for c in f["contexts"] if "<" in "".join(c["tokens"])
    ) if any("<" in "".join(c["tokens"]) for f in report["features"] for c in f["contexts"]) else (
        report["features"][0]["contexts"][0]["tokens"][report["features"][0]["contexts"][0]["at"]]
    )  # fmt: skip
    page.click("button[data-view=features]")
    page.fill("#feature-query", token)
    page.click("#feature-search")
    want = search(report, token, limit=50)
    page.wait_for_function(
        f"document.querySelector('#features-status').textContent.startsWith('{len(want)} feature')"
    )
    shown = [
        int(b.get_attribute("data-id")) for b in page.query_selector_all("#feature-list button")
    ]
    assert shown == want and len(want) > 0


def test_steer_with_a_feature_generates_what_the_api_gives(ui, page):  # noqa: F811
    page.click("button[data-view=features]")
    page.fill("#feature-query", "3")
    page.press("#feature-query", "Enter")
    page.wait_for_function(
        "document.querySelector('#feature-detail h3')?.textContent === 'feature 3'"
    )
    page.click("#steer-with")
    assert page.is_visible("#view-generate") and page.input_value("#steer").startswith("3:")
    alpha = float(page.input_value("#steer").split(":")[1])
    page.fill("#prompt", "ROMEO: hello")
    page.fill("#temperature", "0")
    page.fill("#max_tokens", "30")
    page.click("#generate")
    page.wait_for_function(
        "document.querySelector('#gen-status').textContent.includes('tokens in')"
    )
    shown = page.inner_text("#output .generated")
    sae = page.input_value("#steer-sae")
    body = {"prompt": "ROMEO: hello", "max_tokens": 30, "temperature": 0}
    steered = {**body, "steer": [{"sae": sae, "feature": 3, "alpha": alpha}]}
    want = httpx.post(ui.url + "/v1/completions", json=steered, timeout=60).json()
    plain = httpx.post(ui.url + "/v1/completions", json=body, timeout=60).json()
    assert shown == want["choices"][0]["text"] != plain["choices"][0]["text"]
    # a malformed field is refused in the page, before any request
    page.fill("#steer", "3:x")
    page.click("#generate")
    page.wait_for_function("document.querySelector('#gen-status').textContent.startsWith('steer:')")
    assert "error" in (page.get_attribute("#gen-status", "class") or "")
