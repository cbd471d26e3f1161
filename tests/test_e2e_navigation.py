"""In a real browser, on a server's cold start: the sidebar lists exactly the app's pages, in the app's order, and a
deep link opens its page inside the app (with the run picker), whatever else lies beside app.py. Streamlit runs the
first script of a server process through its older multipage mode when a folder named `pages` sits beside the entry
script (every .py file in it becomes a page, run without app.py) until st.navigation is called; this test is what
catches that."""

from __future__ import annotations

import ast

import pytest

from browser import CHROMIUM, CHROMIUM_ARGS, ROOT, require_browser, settle, start_server, stop_server

playwright = require_browser()
pytestmark = pytest.mark.slow


def app_page_titles() -> list[str]:
    """The titles of app.py's st.Page list, in order (read from its source, so the test follows the app)."""
    titles = []
    for node in ast.walk(ast.parse((ROOT / "app.py").read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "Page":
            titles += [k.value.value for k in node.keywords if k.arg == "title"]
    return titles


def sidebar_links(page) -> list[str]:
    """The sidebar's page links as shown (the last line of each: the first is its Material icon's name)."""
    return [t.strip().splitlines()[-1] for t in page.locator('[data-testid="stSidebarNav"] a').all_inner_texts()]


def test_a_cold_start_shows_exactly_the_apps_pages_and_a_deep_link_opens_inside_the_app(tmp_path):
    titles = app_page_titles()
    assert titles[:2] == ["Runs", "New run"] and "Explore" in titles
    (tmp_path / "runs").mkdir()
    proc, url = start_server(tmp_path / "runs", tmp_path / "server.log")
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(url + "/explore")  # the server's first script run: a bookmark to a page
            page.get_by_text("Choose a run in the sidebar").wait_for(timeout=90_000)  # the page's own hint
            settle(page)
            assert sidebar_links(page) == titles
            assert page.get_by_role("heading", name="Explore").count() == 1
            assert page.get_by_text("G-DIG Studio").count() >= 1  # app.py's sidebar ran around the page
            other = browser.new_page()
            other.goto(url)
            settle(other)
            assert sidebar_links(other) == titles
            browser.close()
    finally:
        stop_server(proc)
