"""The Compare page in a real browser: pick two rules, see their overlap and the pairs only in one, start a
two-selection evaluation on the tiny model and see its result. Screenshot to docs/screenshots with
GDIG_UPDATE_SCREENSHOTS=1."""

from __future__ import annotations

import os
import re

import pytest

from browser import CHROMIUM, CHROMIUM_ARGS, ROOT, require_browser, start_server, stop_server
from browser import settle as _settle
from conftest import make_pairs, write_jsonl
from gdig.config import ScoreConfig
from gdig.outputs.compare import compare, resolve
from gdig.pipeline.run import score
from gdig.rundir.results import load_run

playwright = require_browser()


@pytest.fixture(scope="module")
def server(tmp_path_factory, llama_dir):
    runs = tmp_path_factory.mktemp("runs")
    data = tmp_path_factory.mktemp("data")
    pool = make_pairs(60, seed=41)
    for i, r in enumerate(pool):
        r["corruption"] = "misaligned" if i % 6 == 0 else None
    cands = write_jsonl(data / "c.jsonl", pool)
    write_jsonl(data / "test.jsonl", make_pairs(4, seed=43))
    seeds = write_jsonl(data / "s.jsonl", make_pairs(6, seed=42))
    score(ScoreConfig(model=str(llama_dir), candidates=str(cands), seeds=str(seeds), out=str(runs / "demo")))
    proc, url = start_server(runs, runs / "server.log")
    yield url, runs
    stop_server(proc)


def _choose(page, label: str, option: str) -> None:
    page.get_by_role("combobox", name=label, exact=True).click()
    page.get_by_role("option", name=option, exact=True).click()
    _settle(page)


@pytest.mark.slow  # about a minute; the same flow runs in the default suite through AppTest (test_app_compare.py)
def test_browser_compare_two_rules_and_train_on_them(server, tmp_path):
    url, runs = server
    shots = ROOT / "docs" / "screenshots" if os.environ.get("GDIG_UPDATE_SCREENSHOTS") else tmp_path / "shots"
    shots.mkdir(parents=True, exist_ok=True)
    run = load_run(runs / "demo")
    expected = compare(run, resolve(run, ["default", "length-ratio"], 20))
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{url}/compare?run=demo")
        page.get_by_text("Train and compare", exact=True).wait_for(timeout=60_000)
        _settle(page)
        _choose(page, "Selection A", "Default rule")
        _choose(page, "Selection B", "Length ratio")
        budget = page.get_by_role("spinbutton", name="Budget (0: each rule's kept set)")
        budget.fill("20")
        budget.press("Enter")
        _settle(page)
        overlap = page.locator("p", has_text="Overlap").first.inner_text()
        for region, count in expected.regions.items():
            assert f"{region}: {count:,}" in overlap
        only = len(expected.only("length-ratio"))
        page.get_by_role("tab", name=f"Only in length-ratio ({only:,})").click()
        _settle(page)

        page.get_by_label("Evaluation name").fill("browser")
        page.get_by_role("spinbutton", name="Training seeds").fill("1")
        page.get_by_role("spinbutton", name="Longest translation (tokens)").fill("3")
        page.get_by_role("button", name="Train and compare 2 selections").click()
        page.get_by_text(re.compile(r"browser: (running|finished)")).first.wait_for(timeout=60_000)
        page.get_by_text(re.compile(r"one seed, no interval")).first.wait_for(timeout=240_000)
        _settle(page)
        assert (runs / "demo" / "evaluations" / "browser" / "report.json").exists()
        page.screenshot(path=str(shots / "compare.png"), full_page=True)
        browser.close()
    assert not errors, errors
