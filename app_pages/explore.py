"""Explore: search, filter and sort candidates; one candidate's explanation with its token heatmap; include or
exclude it by hand (saved in the run, wins over every rule)."""

import streamlit as st

from app_pages.bulk import bulk_controls
from app_pages.common import (
    cached_run,
    current_run,
    current_selection,
    guard,
    run_stamp,
)
from app_pages.heatmap import heatmap_html
from gdig.rundir.curation import load_overrides, save_overrides
from gdig.selection.decisions import DECISIONS, cluster_names, decision_labels
from gdig.studio.explain import explain, nearest, token_influence
from gdig.studio.views import (
    DUPLICATES_FILTER,
    SORT_KEYS,
    SearchIndex,
    candidate_table,
    duplicate_rows,
    find_rows,
)

TABLE_ROWS = 1_000  # rows sent to the browser: a table of 1,000,000 would take seconds and hundreds of MB

st.header("Explore")
run = current_run()


@st.cache_data(max_entries=64, show_spinner=False)
def _nearest(path: str, stamp: float, index: int):
    """A candidate's nearest neighbours, read from every sketch once per candidate and run."""
    return nearest(cached_run(path, stamp), index)


@st.cache_resource(max_entries=4, show_spinner="Indexing the texts for search…")
def _search_index(path: str, stamp: float) -> SearchIndex:
    return SearchIndex.of(cached_run(path, stamp))


@st.cache_resource(max_entries=1, show_spinner="Loading the run's model…")
def _model(path: str, device: str, trust: bool, adapter: str | None, gguf_file: str | None):
    from gdig.inputs.model import load_model

    return load_model(path, device, "float32", trust, adapter=adapter, gguf_file=gguf_file)


with guard():
    cfg, sel = current_selection(run, stop_when_empty=False)  # every candidate can be browsed, kept or not
    cand = run.candidates
    ov = load_overrides(run.path)
    status = decision_labels(sel, run.id_index, ov.include, ov.exclude)
    f1, f2, f3 = st.columns([3, 2, 2])
    query = f1.text_input("Search id, source or target text", key="ex_query")
    show = f2.selectbox("Show", ["all", *DECISIONS, DUPLICATES_FILTER], key="ex_show")
    sort = f3.selectbox("Sort by", SORT_KEYS, key="ex_sort")
    search = _search_index(str(run.path), run_stamp(str(run.path)))
    rows = find_rows(run, search, status, query, "all" if show == DUPLICATES_FILTER else show, sort)
    if show == DUPLICATES_FILTER:
        with st.spinner("Finding duplicates (once per run)…"):
            groups = run.duplicates.near
        rows = duplicate_rows(rows, groups)
    shown = rows[:TABLE_ROWS]
    view = candidate_table(run, status, cluster_names(sel.labels[shown]), rows=shown)
    if show == DUPLICATES_FILTER:
        view.insert(1, "duplicate group", groups[shown])
        view.insert(2, "exact", run.duplicates.exact[shown] >= 0)
    more = (
        f"; the table shows the first {TABLE_ROWS:,} (search or filter to narrow it)" if len(rows) > TABLE_ROWS else ""
    )
    st.caption(f"{len(rows):,} of {run.n:,} candidates{more}")
    event = st.dataframe(
        view, hide_index=True, height=300, on_select="rerun", selection_mode="single-row", key="ex_table"
    )
    picked_rows = event.selection.rows if event else []
    if len(rows):
        listed = "listed" if query or show != "all" else "candidates of the run"
        bulk_controls(run, status, rows, listed, key="ex_bulk")
    ids = view["id"].tolist()
    if picked_rows:
        st.session_state["ex_id"] = ids[picked_rows[0]]
    if not ids:
        st.info("No candidate matches.")
        st.stop()
    rows_of = dict(zip(ids, (int(i) for i in shown), strict=True))
    decided = st.session_state.get("ex_decided")  # (id, decision before it) of the last button pressed here
    if decided and decided[0] not in rows_of and st.session_state.get("ex_id") == decided[0]:
        rows_of = {decided[0]: run.id_index[decided[0]]} | rows_of  # stays in view after leaving the filter
    if st.session_state.get("ex_id") not in rows_of:
        st.session_state["ex_id"] = ids[0]
    chosen = st.selectbox("Candidate", list(rows_of), key="ex_id")
    index = rows_of[chosen]
    e = explain(
        run,
        index,
        kept=sel.kept,
        labels=sel.labels,
        neighbours=_nearest(str(run.path), run_stamp(str(run.path)), index),
    )

    st.subheader(f"Candidate {e.id}")
    m1, m2, m3, m4, m5 = st.columns(5)
    m1.metric("Decision", status[index])
    m2.metric(f"Rank of {e.n:,}", f"{e.rank:,}", help="by mean influence, 1 = the most helpful")  # fits its column
    m3.metric("Seeds helped", f"{e.frac_helped:.0%}")
    m4.metric("Loss", f"{e.loss:.3f}")
    m5.metric("Cluster", "-" if e.cluster is None else e.cluster)
    st.text("Prompt:\n" + str(cand["prompt"].iloc[index]))
    st.text("Target:\n" + str(cand["target"].iloc[index]))
    b1, b2, b3 = st.columns(3)
    for col, label, decision in (
        (b1, "Include", "include"),
        (b2, "Exclude", "exclude"),
        (b3, "Back to the rule", None),
    ):
        if col.button(label, key=f"ov_{decision}"):
            before = "include" if e.id in ov.include else "exclude" if e.id in ov.exclude else None
            ov.set(e.id, decision)
            save_overrides(run.path, ov)
            st.session_state["ex_decided"] = (e.id, before)
            st.rerun()
    if decided and decided[0] == e.id:
        note = f"{e.id} is now {status[index]}"
        if e.id not in ids:
            note += f"; it no longer matches “{show}” and leaves the list when you pick another candidate"
        n1, n2 = st.columns([5, 1])
        n1.info(note + ".")
        if n2.button("Undo", key="ov_undo"):
            ov.set(e.id, decided[1])
            save_overrides(run.path, ov)
            st.session_state.pop("ex_decided")
            st.rerun()
    h, u = st.columns(2)
    h.markdown("**Seeds it helps most**")
    h.dataframe(e.helps, hide_index=True)
    u.markdown("**Seeds it hurts most**")
    u.dataframe(e.hurts, hide_index=True)
    st.markdown("**Nearest neighbours by gradient sketch**")
    st.dataframe(e.neighbours, hide_index=True)

    st.markdown("**Token-level influence**")
    m = run.influence.shape[1]
    target = st.selectbox(
        "On",
        [-1, *range(m)],
        key="ex_seed",
        format_func=lambda j: "the mean over seeds" if j < 0 else f"seed column {j}",
    )
    if st.button("Show token influence", key="ex_tokens"):
        s = run.settings
        model, tok = _model(s.model, s.device, s.trust_remote_code, s.adapter, s.gguf_file)
        ti = token_influence(run, index, model, tok, None if target < 0 else int(target))
        st.html(heatmap_html(ti))
        st.caption(f"Green helps, red hurts; the prompt is faded. Contributions sum to {ti.total:+.4g}.")
