"""The gradient index in a real browser: on the Seeds page drop a seed and add a pasted one, score the new seed
set from the index, see the other pages follow it; ask the pool a question. Screenshots of both pages (to
docs/screenshots with GDIG_UPDATE_SCREENSHOTS=1)."""

from __future__ import annotations

import os
import shutil

import pytest

from browser import CHROMIUM, CHROMIUM_ARGS, ROOT, require_browser, start_server, stop_server
from browser import metric as _metric
from browser import settle as _settle
from conftest import make_pairs, write_jsonl
from gdig.config import ScoreConfig
from gdig.pipeline.run import score
from gdig.rundir.results import load_run

playwright = require_browser()


@pytest.fixture(scope="module")
def server(tmp_path_factory, llama_dir):
    runs = tmp_path_factory.mktemp("runs")
    data = tmp_path_factory.mktemp("data")
    cands = write_jsonl(data / "c.jsonl", make_pairs(80, seed=31))
    seeds = write_jsonl(data / "s.jsonl", [r | {"id": f"s{i}"} for i, r in enumerate(make_pairs(8, seed=32))])
    cfg = ScoreConfig(model=str(llama_dir), candidates=str(cands), seeds=str(seeds), out=str(runs / "demo"))
    score(cfg)
    proc, url = start_server(runs, runs / "server.log")
    yield url, runs
    stop_server(proc)


def test_browser_seeds_and_ask_the_pool(server, tmp_path):
    url, runs = server
    shots = ROOT / "docs" / "screenshots" if os.environ.get("GDIG_UPDATE_SCREENSHOTS") else tmp_path / "shots"
    shots.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))

        page.goto(f"{url}/seeds?run=demo")
        page.get_by_text("Add seeds").wait_for(timeout=60_000)
        _settle(page)
        drop = page.get_by_role("combobox", name="Seeds to drop (exact: their columns go)")
        drop.click()
        page.get_by_role("option", name="s3", exact=True).click()
        page.keyboard.press("Escape")
        page.get_by_label("Source", exact=True).fill("the red sun runs")
        page.get_by_label("Translation", exact=True).fill("die rote Sonne läuft")
        page.get_by_role("button", name="Add this pair").click()
        page.get_by_text("1 pasted pair(s) to add").wait_for(timeout=60_000)
        name = page.get_by_label("Name of the new run")
        name.fill("demo-edited")
        name.press("Enter")
        _settle(page)
        page.screenshot(path=str(shots / "seeds.png"), full_page=True)
        page.get_by_role("button", name="Score the new seed set").click()
        page.get_by_text("This seed set was scored from the index").wait_for(timeout=120_000)
        _settle(page)
        assert page.get_by_role("combobox", name="Run", exact=True).input_value() == "demo-edited"
        edited = load_run(runs / "demo-edited")
        assert edited.seeds["id"].tolist() == ["s0", "s1", "s2", "s4", "s5", "s6", "s7", "added-1"]

        page.get_by_role("link", name="Influence").click()  # the other pages follow the new seed set
        page.get_by_text("Kept share").wait_for(timeout=60_000)
        _settle(page)
        assert "demo-edited" in page.url and int(_metric(page, "Kept").replace(",", "")) >= 0

        page.get_by_role("link", name="Ask the pool").click()
        page.get_by_role("button", name="Ask").wait_for(timeout=60_000)
        page.get_by_label("Source", exact=True).fill("the big dog sees the cat")
        page.get_by_label("Translation (for example a wrong one seen in testing)").fill("der Mond isst Wasser")
        page.get_by_role("button", name="Ask", exact=True).click()
        page.get_by_text("Pool pairs that hurt it most").wait_for(timeout=120_000)
        _settle(page)
        page.screenshot(path=str(shots / "ask.png"), full_page=True)
        assert page.get_by_text("Loss of the pair under the run's model").count() == 1
        browser.close()
    assert not errors, errors
    if not os.environ.get("GDIG_UPDATE_SCREENSHOTS"):
        shutil.rmtree(shots, ignore_errors=True)
