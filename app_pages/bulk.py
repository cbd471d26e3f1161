"""One decision for every candidate a page lists (Explore's filter or search, the map's lasso or box), with the
count it changes shown before it applies and the undo of the last bulk decision. Layout only: the decisions are
gdig.rundir.curation's."""

from __future__ import annotations

import numpy as np
import streamlit as st

from gdig.rundir.curation import VERBS, apply_bulk, last_bulk, undo_bulk
from gdig.studio.views import bulk_changes

CHOICES = {"Exclude": "exclude", "Include": "include", "Return to the rule": None}


def bulk_controls(run, status: np.ndarray, rows: np.ndarray, what: str, key: str) -> None:
    """`rows`: the candidates listed (all of them, not only the table's first rows); `what` names them."""
    c1, c2 = st.columns([2, 3], vertical_alignment="bottom")
    choice = c1.selectbox(f"For all {len(rows):,} {what}", list(CHOICES), key=f"{key}_choice")
    decision = CHOICES[choice]
    changes = bulk_changes(status, rows, decision)
    rest = len(rows) - changes
    already = f"{rest:,} are {VERBS[decision]} by hand already" if decision else f"{rest:,} follow the rule already"
    label = f"{choice} {len(rows):,} candidates" if decision else f"Return {len(rows):,} to the rule"
    c2.button(
        label,
        key=f"{key}_apply",
        disabled=changes == 0,
        help="a bulk decision can be undone",
        on_click=_apply,  # before the next run of the page: one run shows the result, not two
        args=(run, rows, decision),
    )
    st.caption(f"{changes:,} of them would change; {already}.")
    last = last_bulk(run.path)
    if last is not None:
        n1, n2 = st.columns([4, 2], vertical_alignment="center")
        n1.info(f"Last bulk decision: {last.describe()}.")
        n2.button("Undo the bulk decision", key=f"{key}_undo", on_click=undo_bulk, args=(run.path,))


def _apply(run, rows: np.ndarray, decision: str | None) -> None:
    apply_bulk(run.path, np.asarray(run.ids, dtype=object)[rows].tolist(), decision, source="app")
