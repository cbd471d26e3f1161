"""G-DIG Studio: `streamlit run app.py`. Navigation and the run picker; the pages do the rest."""

import streamlit as st

from pages.common import sidebar_run_picker

st.set_page_config(page_title="G-DIG Studio", page_icon=":material/filter_alt:", layout="wide")

pages = [
    st.Page("pages/home.py", title="Runs", icon=":material/folder_open:", default=True),
    st.Page("pages/run.py", title="New run", icon=":material/play_arrow:"),
    st.Page("pages/influence.py", title="Influence", icon=":material/bar_chart:"),
    st.Page("pages/clusters.py", title="Clusters", icon=":material/bubble_chart:"),
    st.Page("pages/explore.py", title="Explore", icon=":material/search:"),
    st.Page("pages/export.py", title="Export", icon=":material/download:"),
]
page = st.navigation(pages)
st.sidebar.title("G-DIG Studio")
sidebar_run_picker()
page.run()
