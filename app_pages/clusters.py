"""Clusters: the UMAP map of gradient sketches, coloured by cluster, score or decision; K and budget; a lasso
or box selection filters the table below."""

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app_pages.common import (
    MAP_POINTS,
    clamp_clusters,
    current_run,
    current_selection,
    guard,
    selection_config,
    setting,
    widget_kwargs,
)  # fmt: skip
from gdig.umap_map import ensure_umap

st.header("Clusters")
run = current_run()
with guard():
    c1, c2, c3 = st.columns(3)
    c1.slider("K (clusters)", 2, 100, **widget_kwargs("clusters"))
    c2.number_input("Budget (0 = every kept candidate)", min_value=0, step=100, **widget_kwargs("budget"))
    c3.selectbox("Colour by", ["cluster", "mean influence", "fraction helped", "decision"], **widget_kwargs("color_by"))
    cfg = selection_config(run, budget=int(setting("budget")) or None)
    clamp_clusters(run, cfg)
    sel = current_selection(run, cfg)
    for msg in sel.messages:
        st.caption(msg)
    with st.spinner("Computing the 2-D map (once per run)…"):
        emb = ensure_umap(run.path)
    n = run.n
    shown = np.arange(n)
    if n > MAP_POINTS:
        shown = np.sort(np.random.default_rng(0).choice(n, MAP_POINTS, replace=False))
        st.caption(f"The map shows a fixed random sample of {MAP_POINTS:,} of {n:,} candidates; the table and "
                   "counts use all of them.")  # fmt: skip
    selected = np.zeros(n, bool)
    selected[sel.indices] = True
    decision = np.where(selected, "selected", np.where(sel.kept, "kept", "rejected"))
    colour = setting("color_by")
    cand = run.candidates
    hover = cand["target"].astype(str).str.slice(0, 80).to_numpy()
    if colour == "cluster":
        marker = dict(color=sel.labels[shown], colorscale="Turbo", size=5, showscale=False)
    elif colour == "decision":
        palette = {"selected": "#16a34a", "kept": "#93c5fd", "rejected": "#d1d5db"}
        marker = dict(color=[palette[d] for d in decision[shown]], size=5)
    else:
        values = run.mean_influence if colour == "mean influence" else run.frac_helped
        marker = dict(color=values[shown], colorscale="RdYlGn", size=5, showscale=True)
    fig = go.Figure(go.Scattergl(x=emb[shown, 0], y=emb[shown, 1], mode="markers", marker=marker,
                                 customdata=shown, hovertext=hover, hoverinfo="text"))  # fmt: skip
    fig.update_layout(height=520, margin=dict(l=10, r=10, t=10, b=10), dragmode="lasso")
    event = st.plotly_chart(fig, key="umap", on_select="rerun", selection_mode=("lasso", "box"))
    picked = [p.get("customdata", shown[p["point_index"]]) for p in (event.selection.points if event else [])]
    rows = np.array(sorted({int(i) for i in picked}), dtype=np.int64) if picked else shown
    if picked:
        st.caption(f"{len(rows):,} candidates in the lasso/box selection (double-click the map to clear it).")

    st.subheader("Cluster summary")
    kept_rows = np.flatnonzero(sel.kept)
    labels = sel.labels[kept_rows]
    summary = []
    for k in np.unique(labels):
        members = kept_rows[labels == k]
        summary.append(
            {
                "cluster": int(k),
                "size": len(members),
                "selected": int(selected[members].sum()),
                "mean influence": float(run.mean_influence[members].mean()),
                "fraction helped": float(run.frac_helped[members].mean()),
                "example": str(cand["target"].iloc[members[np.argmax(run.mean_influence[members])]])[:120],
            }
        )
    st.dataframe(pd.DataFrame(summary), hide_index=True, height=240)
    st.metric("Kept share of the whole pool", f"{sel.kept.mean():.1%}")

    st.subheader("Candidates")
    table = pd.DataFrame({"id": cand["id"].astype(str).to_numpy()[rows], "decision": decision[rows],
                          "cluster": sel.labels[rows], "mean influence": run.mean_influence[rows],
                          "fraction helped": run.frac_helped[rows],
                          "target": cand["target"].astype(str).to_numpy()[rows]})  # fmt: skip
    st.dataframe(table, hide_index=True, height=320)
