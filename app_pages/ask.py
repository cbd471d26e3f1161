"""Ask the pool: for a pair (a wrong translation seen in testing, or its correct version), the pool pairs that
help it most and hurt it most, from the run's gradient index; a click opens one in Explore."""

import streamlit as st

from app_pages.common import current_run, current_selection, guard, open_in_explore
from app_pages.index_common import index_or_hint, run_model
from gdig.pipeline.query import answer_table, ask, pair_example
from gdig.selection.decisions import cluster_names

st.header("Ask the pool")
run = current_run()

with guard():
    index = index_or_hint(run)
    st.caption(
        "Type a pair: its gradient goes through the run's model once, then one product with the index of "
        f"{run.n:,} pool pairs (k = {index.dim:,}). Positive scores help the pair (up-weighting them lowers its "
        "loss), negative ones hurt it: a wrong translation's helpers are the pairs that taught it."
    )
    with st.form("ask_form", border=False):
        c1, c2 = st.columns(2)
        src = c1.text_area("Source", key="ask_src", height=80)
        trg = c2.text_area("Translation (for example a wrong one seen in testing)", key="ask_trg", height=80)
        l1, l2, l3 = st.columns(3)
        src_lang = l1.text_input("Source language (default: the run's)", key="ask_src_lang")
        trg_lang = l2.text_input("Target language (default: the run's)", key="ask_trg_lang")
        top = l3.number_input("Pairs to list", min_value=1, max_value=200, value=10, key="ask_top")
        asked = st.form_submit_button("Ask", type="primary", key="ask_go")
    if asked and not (src.strip() and trg.strip()):
        st.warning("Type both the source and the translation to ask about.")
    elif asked:
        pair = pair_example(run, src.strip(), trg.strip(), src_lang.strip() or None, trg_lang.strip() or None)
        with st.spinner("Asking the pool…"):
            (answer,) = ask(run, index, run_model(str(run.path)), [pair], int(top))
        st.session_state["ask_answer"] = (str(run.path), answer)
    held = st.session_state.get("ask_answer")
    if held and held[0] == str(run.path):
        answer = held[1]
        cfg, sel = current_selection(run, stop_when_empty=False)
        labels = cluster_names(sel.labels)
        st.metric("Loss of the pair under the run's model", f"{answer.loss:.3f}")
        for which, title in (("helps", "Pool pairs that help it most"), ("hurts", "Pool pairs that hurt it most")):
            st.markdown(f"**{title}**")
            table = answer_table(run, answer, which, labels)
            event = st.dataframe(
                table.drop(columns="row"),
                hide_index=True,
                on_select="rerun",
                selection_mode="single-row",
                key=f"ask_{which}",
            )
            if event and event.selection.rows:
                open_in_explore(str(table["id"].iloc[event.selection.rows[0]]))
        st.caption("Click a row to open its explanation in Explore.")
