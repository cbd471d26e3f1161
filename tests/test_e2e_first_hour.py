"""A curator's first hour in a real browser (issue "A curator's first hour"): build the demo from an empty
cache, see a non-empty Clusters map on the first visit, start a named run and see it attached with an overall
ETA, cancel it mid-fit, resume it (the fit continues where it stopped), delete it; and the app server stays idle
while a tab is open and no job runs. Slow: the demo build takes about two minutes on 2 CPU cores."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from browser import CHROMIUM, CHROMIUM_ARGS, cpu_seconds, require_browser, settle, start_server, stop_server

playwright = require_browser()
pytestmark = pytest.mark.slow
IDLE_SECONDS = 30


def _status(run: Path) -> dict:
    try:
        return json.loads((run / "status.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _wait(predicate, timeout: float, what: str, step: float = 0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")


def test_first_hour_walk(tmp_path):
    runs, cache = tmp_path / "runs", tmp_path / "cache"  # empty runs folder, empty demo cache
    runs.mkdir()
    proc, url = start_server(runs, tmp_path / "server.log", {"GDIG_CACHE": str(cache)})
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            page.get_by_role("button", name="Build the demo").wait_for(timeout=60_000)
            settle(page)

            # An open tab with no job costs the server (almost) nothing.
            before, t0 = cpu_seconds(proc.pid), time.time()
            page.wait_for_timeout(IDLE_SECONDS * 1000)
            idle = (cpu_seconds(proc.pid) - before) / (time.time() - t0)
            print(f"app server CPU with a tab open and no job: {idle:.1%} of a core over {IDLE_SECONDS} s")
            assert idle < 0.05

            page.get_by_role("button", name="Build the demo").click()
            page.get_by_text("Building the demo:").filter(visible=True).first.wait_for(timeout=60_000)
            eta = re.compile(r"Building the demo: \d+% · about .+ left")
            page.get_by_text(eta).filter(visible=True).first.wait_for(timeout=120_000)  # the whole build's ETA
            page.get_by_text("The demo is ready.").wait_for(timeout=420_000)
            settle(page)
            table = page.locator('[data-testid="stDataFrame"]').first.inner_text()
            assert "running" not in table  # the runs table follows the job without a reload

            page.get_by_role("button", name="Open the demo").click()
            page.get_by_text("Cluster summary").wait_for(timeout=180_000)
            settle(page)
            assert "/clusters" in page.url and "run=demo" in page.url
            assert page.locator(".js-plotly-plot .legend").count() >= 1  # the map, with its legend
            legend = page.locator(".js-plotly-plot .legend").first.text_content()
            assert "cluster 0" in legend
            assert page.locator(".js-plotly-plot .scatterlayer, .js-plotly-plot canvas").count() >= 1

            model = next(cache.glob("*/model"))
            pool, seeds = model.parent / "pool.jsonl", model.parent / "seeds.jsonl"
            page.goto(f"{url}/run?run=demo")
            page.get_by_role("textbox", name="Run name").wait_for(timeout=60_000)
            settle(page)
            page.get_by_role("textbox", name="Run name").fill("walk-run")
            page.get_by_role("textbox", name="Model", exact=True).fill(str(model))
            page.get_by_role("textbox", name="Candidates file").fill(str(pool))
            page.get_by_role("textbox", name="Seeds file").fill(str(seeds))
            page.get_by_role("textbox", name="Seeds file").press("Tab")
            settle(page)
            page.get_by_text("Settings", exact=True).click()  # a fit set of its own: the demo's factors don't apply
            fit_on = page.get_by_role("spinbutton", name="Fit curvature on (0 = all)")
            fit_on.fill("2800")
            fit_on.press("Tab")
            settle(page)
            assert page.get_by_role("textbox", name="Run name").input_value() == "walk-run"
            page.get_by_role("button", name="Start").click()
            page.get_by_role("heading", name=re.compile("Run walk-run")).wait_for(timeout=60_000)
            assert "run=walk-run" in page.url
            page.get_by_text("left overall").filter(visible=True).first.wait_for(timeout=120_000)

            run = runs / "walk-run"
            _wait(
                lambda: _status(run).get("stage") == "fit_covariance" and _status(run).get("done", 0) >= 600,
                180,
                "the fit to be under way",
            )
            page.get_by_role("button", name="Cancel").click()
            page.get_by_text("The run stopped: cancelled").wait_for(timeout=60_000)
            checkpoint = run / "partial" / "fit_covariance.safetensors"
            assert checkpoint.exists()

            seen: list[int] = []
            page.get_by_role("button", name="Resume").click()

            def fit_done():
                s = _status(run)
                if s.get("stage") == "fit_covariance" and not s.get("error") and s.get("pid"):
                    seen.append(int(s["done"]))
                return seen

            _wait(fit_done, 120, "the resumed fit", step=0.02)
            assert seen[0] >= 600  # continued after the saved batches, not from zero
            page.get_by_text("left overall").filter(visible=True).first.wait_for(timeout=120_000)
            page.get_by_role("button", name="Cancel").click()
            try:
                page.get_by_text("The run stopped: cancelled").filter(visible=True).first.wait_for(timeout=60_000)
            except Exception:
                page.screenshot(path=str(tmp_path / "fail.png"))
                raise

            page.goto(f"{url}/?run=demo")
            page.get_by_text("Run to open or delete").wait_for(timeout=60_000)
            settle(page)
            page.get_by_role("combobox", name="Run to open or delete").click()
            page.get_by_role("option", name="walk-run").click()
            settle(page)
            page.get_by_role("button", name="Delete…").click()
            page.get_by_role("button", name="Delete walk-run").click()
            _wait(lambda: not run.exists(), 30, "the run to be deleted", step=0.2)
            settle(page)
            assert "walk-run" not in page.locator('[data-testid="stDataFrame"]').first.inner_text()
            browser.close()
        assert not errors, errors
    finally:
        stop_server(proc)
