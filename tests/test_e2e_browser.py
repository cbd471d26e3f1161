"""End to end in a real browser: `streamlit run app.py` on a free local port, driven by Playwright in headless
Chromium (Debian's /usr/bin/chromium). Opens a run, moves the threshold, selects an example, downloads the
export and checks it; saves screenshots (to docs/screenshots with GDIG_UPDATE_SCREENSHOTS=1)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from browser import CHROMIUM, CHROMIUM_ARGS, ROOT, require_browser, start_server, stop_server
from browser import metric as _metric
from browser import settle as _settle
from conftest import make_pairs, write_jsonl
from gdig.config import ScoreConfig
from gdig.run import score

playwright = require_browser()


@pytest.fixture(scope="module")
def server(tmp_path_factory, llama_dir):
    runs = tmp_path_factory.mktemp("runs")
    data = tmp_path_factory.mktemp("data")
    cands = write_jsonl(data / "c.jsonl", make_pairs(80, seed=21))
    seeds = write_jsonl(data / "s.jsonl", make_pairs(8, seed=22))
    score(
        ScoreConfig(
            model=str(llama_dir),
            candidates=str(cands),
            seeds=str(seeds),
            out=str(runs / "demo"),
            sketch_dim=64,
            hessian="kfac",
        )
    )
    strict = '{"rule": "fraction", "tau": 1.0, "combine": "influence"}'  # G-DIG's rule alone, to loosen
    (runs / "demo" / "curation.json").write_text(strict)
    proc, url = start_server(runs, runs / "server.log")
    yield url, runs
    stop_server(proc)


def _shots_dir(tmp_path: Path) -> Path:
    if os.environ.get("GDIG_UPDATE_SCREENSHOTS"):
        return ROOT / "docs" / "screenshots"
    return tmp_path / "screenshots"


def test_browser_session_threshold_explore_and_export(server, tmp_path):
    url, runs = server
    shots = _shots_dir(tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        elsewhere: list[str] = []  # the app works offline: no request leaves the local server (page icon included)
        page.on("request", lambda r: None if r.url.startswith((url, "data:", "blob:")) else elsewhere.append(r.url))

        page.goto(f"{url}/?run=demo")
        page.get_by_text("Runs", exact=True).first.wait_for(timeout=60_000)
        _settle(page)
        page.screenshot(path=str(shots / "runs.png"), full_page=True)
        assert page.get_by_role("combobox", name="Run", exact=True).input_value() == "demo"

        page.goto(f"{url}/influence?run=demo")
        page.get_by_text("Kept share").wait_for(timeout=60_000)
        _settle(page)
        strict = int(_metric(page, "Kept").replace(",", ""))
        slider = page.get_by_role("slider").first
        slider.focus()
        slider.press("Home")  # tau = 0: every candidate helps at least 0% of seeds
        page.wait_for_function(
            "() => [...document.querySelectorAll('[data-testid=\"stMetricValue\"]')].some(e => e.innerText === '80')",
            timeout=60_000,
        )
        assert int(_metric(page, "Kept").replace(",", "")) == 80 > strict
        slider.press("End")
        slider.press("ArrowLeft")  # back to a rule that keeps a subset
        _settle(page)
        page.screenshot(path=str(shots / "influence.png"), full_page=True)

        page.goto(f"{url}/clusters?run=demo")
        page.get_by_text("Cluster summary").wait_for(timeout=120_000)
        _settle(page)
        page.screenshot(path=str(shots / "clusters.png"), full_page=True)

        page.goto(f"{url}/explore?run=demo")
        page.get_by_text("Token-level influence").wait_for(timeout=60_000)
        _settle(page)
        box = page.get_by_role("combobox", name="Candidate", exact=True)
        box.click()
        box.fill("17")
        page.get_by_role("option", name="17", exact=True).click()
        page.get_by_text("Candidate 17", exact=True).wait_for(timeout=60_000)
        page.get_by_role("button", name="Show token influence").click()
        page.get_by_text("Contributions sum to").wait_for(timeout=120_000)
        _settle(page)
        page.screenshot(path=str(shots / "explore.png"), full_page=True)

        page.goto(f"{url}/export?run=demo")
        page.get_by_text("Download JSONL").wait_for(timeout=60_000)
        _settle(page)
        page.screenshot(path=str(shots / "export.png"), full_page=True)
        with page.expect_download(timeout=60_000) as dl:
            page.get_by_role("button", name="Download JSONL").click()
        path = dl.value.path()
        lines = [json.loads(x) for x in Path(path).read_text(encoding="utf-8").splitlines()]
        assert lines and all({"src_text", "trg_text", "gdig"} <= set(r) for r in lines)
        ids = [r["gdig"]["id"] for r in lines]
        assert len(set(ids)) == len(ids)
        browser.close()
    assert not errors, errors
    assert not elsewhere, elsewhere
    if not os.environ.get("GDIG_UPDATE_SCREENSHOTS"):
        shutil.rmtree(shots, ignore_errors=True)
