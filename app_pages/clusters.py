"""Clusters: the UMAP map of gradient sketches, coloured by cluster, score or decision; K and budget; a lasso
or box selection filters the table below."""

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from app_pages.bulk import bulk_controls
from app_pages.common import (
    MAP_POINTS,
    current_run,
    current_selection,
    guard,
    help_for,
    label_for,
    setting,
    widget_kwargs,
)
from gdig.pipeline.umap_map import ensure_umap
from gdig.selection.decisions import cluster_names, decision_labels
from gdig.studio.views import candidate_table, cluster_summary, legend_order, map_sample


def _keep_lasso() -> None:
    """Keep the lasso/box selection as candidate rows, so a new colouring or K does not drop it."""
    event = st.session_state.get("umap") or {}
    points = (event.get("selection") or {}).get("points") or []
    rows = sorted({int(p["customdata"]) for p in points if "customdata" in p})
    if rows:
        st.session_state["lasso_rows"] = rows


PALETTE = {
    "selected": "#16a34a",
    "kept": "#93c5fd",
    "rejected": "#d1d5db",
    "included by hand": "#7c3aed",
    "excluded by hand": "#dc2626",
    "not clustered (rejected)": "#d1d5db",
}

st.header("Clusters")
run = current_run()
if st.session_state.get("_lasso_run") != str(run.path):  # a lasso belongs to one run
    st.session_state["lasso_rows"], st.session_state["_lasso_run"] = [], str(run.path)
with guard():
    c1, c2, c3 = st.columns(3)
    c1.slider(label_for("clusters"), 2, 100, help=help_for("clusters"), **widget_kwargs("clusters"))
    c2.number_input(label_for("budget"), step=100, help=help_for("budget"), **widget_kwargs("budget"))
    c3.selectbox("Colour by", ["cluster", "mean influence", "fraction helped", "decision"], **widget_kwargs("color_by"))
    cfg, sel = current_selection(run)
    for msg in sel.messages:
        st.caption(msg)
    with st.spinner("Computing the 2-D map (once per run)…"):
        emb = ensure_umap(run.path)
    n = run.n
    shown = map_sample(n, MAP_POINTS)
    if len(shown) < n:
        st.caption(
            f"The map shows a fixed random sample of {MAP_POINTS:,} of {n:,} candidates; the table and "
            "counts use all of them."
        )
    decision = decision_labels(sel, run.id_index, cfg.include, cfg.exclude)
    colour = setting("color_by")
    hover = run.candidates["target"].iloc[shown].astype(str).str.slice(0, 80).to_numpy()  # the drawn points only
    lasso = st.session_state.get("lasso_rows") or []
    fig = go.Figure()

    def points(rows: np.ndarray, name: str, marker: dict) -> go.Scattergl:
        """One trace of map points; customdata carries the candidate rows back from a lasso."""
        x, y, text = emb[rows, 0], emb[rows, 1], hover[np.searchsorted(shown, rows)]
        return go.Scattergl(
            x=x, y=y, mode="markers", name=name, customdata=rows, marker=marker, hovertext=text, hoverinfo="text"
        )

    if colour in ("cluster", "decision"):
        groups = cluster_names(sel.labels[shown]) if colour == "cluster" else decision[shown]
        for g in legend_order(groups):
            name = f"cluster {g}" if g.isdigit() else g
            fig.add_trace(points(shown[groups == g], name, dict(size=5, color=PALETTE.get(g))))
    else:
        values = run.mean_influence if colour == "mean influence" else run.frac_helped
        bar = dict(title=dict(text=colour))
        fig.add_trace(
            points(shown, colour, dict(color=values[shown], colorscale="RdYlGn", size=5, showscale=True, colorbar=bar))
        )
    if lasso:  # the curator's lasso stays drawn whatever the colouring
        picked = set(lasso)
        for trace in fig.data:
            trace.selectedpoints = [i for i, r in enumerate(trace.customdata) if int(r) in picked]
    fig.update_layout(
        height=520,
        margin=dict(l=10, r=10, t=10, b=10),
        dragmode="lasso",
        showlegend=colour in ("cluster", "decision"),  # a score's colour bar is its legend: both would overlap
        legend=dict(title=dict(text=colour), itemsizing="constant"),
    )
    st.plotly_chart(fig, key="umap", on_select=_keep_lasso, selection_mode=("lasso", "box"))
    rows = np.array(sorted(lasso), dtype=np.int64) if lasso else shown
    if lasso:
        c1, c2 = st.columns([4, 1])
        c1.caption(f"{len(rows):,} candidates in the lasso/box selection; it stays when you change the colouring.")
        if c2.button("Clear the selection", key="clear_lasso"):
            st.session_state["lasso_rows"] = []
            st.rerun()
        bulk_controls(run, decision, rows, "in the selection", key="map_bulk")

    st.subheader("Cluster summary")
    st.dataframe(cluster_summary(run, sel), hide_index=True, height=240)
    st.metric("Kept share of the whole pool", f"{sel.kept.mean():.1%}")

    st.subheader("Candidates")
    columns = ["id", "decision", "cluster", "mean influence", "fraction helped", "target"]
    table = candidate_table(run, decision, cluster_names(sel.labels[rows]), rows=rows)[columns]
    st.dataframe(table, hide_index=True, height=320)
