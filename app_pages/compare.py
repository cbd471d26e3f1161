"""Compare: two or three selections of the run side by side (sizes, overlap, clusters, labelled kinds, scores, the
pairs in one and not the others, a click opens one in Explore), and Train and compare: a LoRA fine-tune on each,
judged on a test set, as a background job."""

import json

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from app_pages.common import bars, cached_run, current_run, guard, open_in_explore, run_stamp, selection_config
from app_pages.compare_training import training_panel
from gdig.outputs.compare import RULES, compare, resolve, rows_table, saved_exports, score_columns
from gdig.selection.select import SelectionConfig
from gdig.studio.views import histogram_counts

RULE_LABELS = {
    "current": "Current rule",
    "default": "Default rule",
    "paper": "Paper's rule (τ = 1)",
    "length-ratio": "Length ratio",
    "random": "Random",
}
NONE = "—"
TABLE_ROWS = 1_000  # rows sent to the browser per table, as in Explore
COLOURS = ("#2563eb", "#f97316", "#16a34a")


@st.cache_data(max_entries=8, show_spinner="Comparing…")
def _compared(path: str, stamp: float, specs: tuple, budget: int | None, cfg_json: str, saved: tuple):
    """Cached per run, choice, rule settings and saved exports (`saved`: their names and times, so that a file
    saved again is read again)."""
    run = cached_run(path, stamp)
    cfg = SelectionConfig(**json.loads(cfg_json))
    sels = resolve(run, list(specs), budget, cfg, cfg.seed)
    return sels, compare(run, sels, cfg.clusters, cfg.seed)


def _pickers(run) -> tuple[list[str], int | None]:
    options = {RULE_LABELS[k]: k for k in RULES} | {f"Saved: {p.stem}": str(p) for p in saved_exports(run)}
    labels = list(options)
    c = st.columns(4)
    a = c[0].selectbox("Selection A", labels, index=0, key="cmp_a")
    b = c[1].selectbox("Selection B", labels, index=labels.index(RULE_LABELS["random"]), key="cmp_b")
    third = c[2].selectbox("Selection C (optional)", [NONE, *labels], key="cmp_c")
    budget = c[3].number_input(
        "Budget (0: each rule's kept set)",
        min_value=0,
        step=100,
        key="cmp_budget",
        help="Rules select this many pairs; the length ratio and random take the first selection's size when 0",
    )
    chosen = [options[a], options[b]] + ([options[third]] if third != NONE else [])
    return chosen, int(budget) or None


def _overview(result, sels) -> None:
    cols = st.columns(len(sels))
    for col, s in zip(cols, sels, strict=True):
        col.metric(s.name, f"{len(s.rows):,} pairs", help=s.source)
    regions = {k: v for k, v in result.regions.items() if v}
    st.markdown("**Overlap** " + " · ".join(f"{k}: **{v:,}**" for k, v in result.regions.items()))
    fig = go.Figure(go.Bar(x=list(regions.values()), y=list(regions), orientation="h", marker_color="#64748b"))
    fig.update_layout(
        height=60 + 28 * len(regions), margin=dict(l=10, r=10, t=10, b=10), yaxis=dict(autorange="reversed")
    )
    st.plotly_chart(fig, key="cmp_overlap")


def _clusters_and_kinds(result, k: int) -> None:
    left, right = st.columns(2)
    fig = go.Figure()
    for name, colour in zip(result.names, COLOURS, strict=False):
        counts = result.per_cluster[name]
        fig.add_trace(go.Bar(x=[str(c) for c in counts.index], y=counts.to_numpy(), name=name, marker_color=colour))
    fig.update_layout(barmode="group", title=f"Per cluster (K = {k} over the whole pool)", height=300)
    left.plotly_chart(fig, key="cmp_clusters")
    if result.per_kind is not None:
        right.markdown("**Per labelled kind** (the pool's `corruption` field)")
        right.dataframe(result.per_kind, key="cmp_kinds")
    else:
        right.caption("The pool carries no labels (a `corruption` field), so there are no per-kind counts.")


def _distributions(run, result, sels) -> None:
    scores = list(dict.fromkeys(s for s, _ in result.distributions.index))
    score = st.selectbox("Distribution of", scores, key="cmp_score")
    v = np.asarray(score_columns(run)[score], np.float64)
    rows = np.concatenate([s.rows for s in sels])
    finite = v[rows][np.isfinite(v[rows])]
    if not len(finite):
        st.caption("No values to show.")
        return
    edges = np.histogram_bin_edges(finite, 40)
    fig = go.Figure()
    for s, colour in zip(sels, COLOURS, strict=False):
        counts, _ = histogram_counts(v[s.rows], edges)
        fig.add_trace(bars(counts, edges, name=s.name, opacity=0.55, marker_color=colour))
    fig.update_layout(barmode="overlay", height=260, margin=dict(l=10, r=10, t=10, b=10))
    st.plotly_chart(fig, key="cmp_dist")
    st.dataframe(result.distributions.loc[score].round(4), key="cmp_dist_table")


def _only_rows(run, result) -> None:
    st.subheader("Pairs in one selection only")
    tabs = st.tabs([f"Only in {n} ({len(result.only(n)):,})" for n in result.names])
    for tab, name in zip(tabs, result.names, strict=True):
        rows = result.only(name)
        table = rows_table(run, rows, result.labels).head(TABLE_ROWS)
        if len(rows) > TABLE_ROWS:
            tab.caption(f"The {TABLE_ROWS:,} with the highest mean influence of {len(rows):,}.")
        event = tab.dataframe(
            table, hide_index=True, on_select="rerun", selection_mode="single-row", key=f"cmp_only_{name}", height=300
        )
        if event and event.selection.rows:
            open_in_explore(str(table["id"].iloc[event.selection.rows[0]]))
    st.caption("Click a column's header to sort; click a row to open its explanation in Explore.")


st.header("Compare")
run = current_run()
with guard():
    specs, budget = _pickers(run)
    cfg = selection_config(run)
    saved = tuple((p.name, p.stat().st_mtime) for p in saved_exports(run))
    settings = json.dumps(cfg.to_dict(), sort_keys=True)
    sels, result = _compared(str(run.path), run_stamp(str(run.path)), tuple(specs), budget, settings, saved)
    _overview(result, sels)
    _clusters_and_kinds(result, cfg.clusters)
    _distributions(run, result, sels)
    _only_rows(run, result)
    st.divider()
    training_panel(run, sels)
