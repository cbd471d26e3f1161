"""Runs: every run under the runs folder, newest first, with its state; pick one to inspect."""

import datetime as dt

import pandas as pd
import streamlit as st

from gdig.jobs import list_runs
from pages.common import RUN_KEY, guard, runs_dir

st.header("Runs")
with guard():
    runs = list_runs(runs_dir())
    if not runs:
        st.info(f"No runs yet in `{runs_dir()}`. Start one on the **New run** page.")
        st.page_link("pages/run.py", label="New run", icon=":material/play_arrow:")
    else:
        rows = [{"run": r["name"], "state": r["state"], "stage": r["job"].stage,
                 "progress": f"{r['job'].done}/{r['job'].total}",
                 "modified": dt.datetime.fromtimestamp(r["mtime"]).strftime("%Y-%m-%d %H:%M"),
                 "error": r["job"].error or ""} for r in runs]  # fmt: skip
        st.dataframe(pd.DataFrame(rows), hide_index=True)
        names = [r["name"] for r in runs]
        chosen = st.selectbox("Open run", names, key="home_open")
        if st.button("Open", type="primary"):
            st.session_state[RUN_KEY] = str(runs_dir() / chosen)
            st.switch_page("pages/influence.py")
