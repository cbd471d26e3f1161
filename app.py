"""G-DIG Studio: `streamlit run app.py`. Navigation and the run picker; the pages do the rest."""

from pathlib import Path

import streamlit as st

from app_pages.common import sidebar_run_picker

ICON = Path(__file__).with_name("app_pages") / "assets" / "icon.png"  # a file: a Material page icon is fetched online
st.set_page_config(page_title="G-DIG Studio", page_icon=str(ICON), layout="wide")

pages = [
    st.Page("app_pages/home.py", title="Runs", icon=":material/folder_open:", default=True),
    st.Page("app_pages/run.py", title="New run", icon=":material/play_arrow:"),
    st.Page("app_pages/seeds.py", title="Seeds", icon=":material/spa:"),
    st.Page("app_pages/ask.py", title="Ask the pool", icon=":material/help:"),
    st.Page("app_pages/influence.py", title="Influence", icon=":material/bar_chart:"),
    st.Page("app_pages/clusters.py", title="Clusters", icon=":material/bubble_chart:"),
    st.Page("app_pages/explore.py", title="Explore", icon=":material/search:"),
    st.Page("app_pages/compare.py", title="Compare", icon=":material/compare_arrows:"),
    st.Page("app_pages/export.py", title="Export", icon=":material/download:"),
]
page = st.navigation(pages)
st.sidebar.title("G-DIG Studio")
sidebar_run_picker()
page.run()
