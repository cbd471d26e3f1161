"""Export: budget and strategy, a preview with counts per cluster and a comparison against a random selection
of the same size; download the JSONL or save it into the run with its manifest."""

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from app_pages.common import (
    bars,
    current_run,
    current_selection,
    guard,
    help_for,
    label_for,
    widget_kwargs,
)
from gdig.outputs.export import save_into_run, selection_lines
from gdig.selection.select import STRATEGIES, WITHIN
from gdig.studio.views import compare_with_random, histogram_counts

st.header("Export")
run = current_run()
with guard():
    a, b, c, d = st.columns(4)
    a.number_input(label_for("budget"), step=100, help=help_for("budget"), **widget_kwargs("budget"))
    b.selectbox(label_for("strategy"), STRATEGIES, help=help_for("strategy"), **widget_kwargs("strategy"))
    c.selectbox(label_for("within"), WITHIN, help=help_for("within"), **widget_kwargs("within"))
    d.number_input(label_for("seed"), min_value=0, help=help_for("seed"), **widget_kwargs("seed"))
    cfg, sel = current_selection(run)
    for msg in sel.messages:
        st.warning(msg)
    n_sel = len(sel.indices)
    st.metric("Selected", f"{n_sel:,}", help=f"{int(sel.kept.sum()):,} kept by the quality rule, K = {cfg.clusters}")
    counts = sel.cluster_counts()
    fig = go.Figure(go.Bar(x=[str(k) for k in counts], y=list(counts.values()), marker_color="#2563eb"))
    fig.update_layout(title="Selected per cluster", height=260, margin=dict(l=10, r=10, t=40, b=10))
    st.plotly_chart(fig, key="per_cluster")

    compare, rnd, overlap = compare_with_random(run, sel, cfg.seed)
    st.subheader("Against a random selection of the same size")
    st.dataframe(compare, hide_index=True)
    st.caption(f"Overlap with the random selection: {overlap:,} of {n_sel:,}.")
    dist = go.Figure()
    edges = np.histogram_bin_edges(run.mean_influence[np.concatenate([sel.indices, rnd])], 50)
    for name, rows in (("G-DIG", sel.indices), ("random", rnd)):
        counts, _ = histogram_counts(run.mean_influence[rows], edges)
        dist.add_trace(bars(counts, edges, name=name, opacity=0.6))
    dist.update_layout(barmode="overlay", title="Mean influence", height=260, margin=dict(l=10, r=10, t=40, b=10))
    st.plotly_chart(dist, key="dist")

    st.subheader("Preview")
    preview = run.candidates.iloc[sel.indices[:20]][["id", "prompt", "target"]]
    st.dataframe(preview, hide_index=True, height=240)
    metadata = st.checkbox(
        "Add a `gdig` field (score, fraction helped, cluster) to each line", value=True, key="exp_meta"
    )
    st.download_button(
        "Download JSONL",
        lambda: "".join(selection_lines(run, sel, metadata)).encode("utf-8"),  # made on click, not on every rerun
        file_name=f"{run.path.name}-selection.jsonl",
        mime="application/jsonl",
        type="primary",
        key="exp_download",
    )
    name = st.text_input("Save into the run as", value="selection", key="exp_name")
    if st.button("Save", key="exp_save"):
        out, man = save_into_run(run, sel, cfg, name, metadata)
        st.success(f"Saved {out.name} and its manifest {man.name} in {out.parent}")
