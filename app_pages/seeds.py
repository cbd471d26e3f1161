"""Seeds: the run's seed set with each seed's loss, how many candidates help it and how it agrees with the
others, flags for the unreliable ones; untick seeds, add pasted or uploaded ones, and save the result as a new
seed set of the run, scored from the gradient index in seconds."""

import tempfile
from pathlib import Path

import streamlit as st

from app_pages.common import choose_run, current_run, guard, run_dir, runs_dir
from app_pages.index_common import index_or_hint, new_pairs_file, run_model, with_languages
from gdig.names import check_name
from gdig.pipeline.rescoring import SeedEdit, describe, read_seed_file, rescore
from gdig.studio.seeds import FLAGS, seed_review

st.header("Seeds")
run = current_run()
ADDED = "seeds_added"  # pasted pairs waiting to be scored, per run

with guard():
    note = describe(run)
    if note:
        st.info(f"This seed set was scored from the index: {note}.")
    table = seed_review(run)
    flagged = int((table["flags"] != "").sum())
    st.caption(
        f"{len(table)} seeds; {flagged} flagged. " + " ".join(f"**{name}**: {text}." for name, text in FLAGS.items())
    )
    st.dataframe(
        table,
        hide_index=True,
        column_config={
            "flags": st.column_config.TextColumn(width="medium"),
            "helped by": st.column_config.NumberColumn(format="percent"),
            "loss": st.column_config.NumberColumn(format="%.3f"),
            "agreement": st.column_config.NumberColumn(format="%.3f"),
        },
        key="seed_table",
    )
    drop_key = f"seed_drop_{run.path.name}"
    flagged_ids = table.loc[table["flags"] != "", "id"].tolist()
    if st.button(f"Drop the {len(flagged_ids)} flagged", key="seed_drop_flagged", disabled=not flagged_ids):
        st.session_state[drop_key] = sorted(set(st.session_state.get(drop_key, [])) | set(flagged_ids))
    dropped = st.multiselect("Seeds to drop (exact: their columns go)", table["id"].tolist(), key=drop_key)

    st.subheader("Add seeds")
    added = st.session_state.setdefault(ADDED, {}).setdefault(str(run.path), [])
    with st.form("seed_add_form", clear_on_submit=True, border=False):
        c1, c2 = st.columns(2)
        src = c1.text_area("Source", key="seed_src", height=80)
        trg = c2.text_area("Translation", key="seed_trg", height=80)
        if st.form_submit_button("Add this pair", key="seed_add"):
            if src.strip() and trg.strip():
                added.append(with_languages(run, {"src_text": src.strip(), "trg_text": trg.strip()}))
            else:
                st.warning("Type both the source and its translation.")
    upload = st.file_uploader("…or a file of pairs (JSONL, JSON, CSV, TSV, Parquet)", key="seed_upload")
    if added:
        st.caption(f"{len(added)} pasted pair(s) to add:")
        st.dataframe(added, hide_index=True)
        if st.button("Clear the pasted pairs", key="seed_clear"):
            added.clear()
            st.rerun()

    st.subheader("Save as a new seed set")
    changes = len(dropped) + len(added) + (1 if upload else 0)
    default_name = f"{run.path.name}--seeds-{len(table) - len(dropped) + len(added)}"
    name = st.text_input("Name of the new run", value=default_name, key="seed_set_name")
    st.caption(
        f"{len(dropped)} seed(s) dropped, {len(added)} pasted"
        + (f", and the pairs of {upload.name}" if upload else "")
        + ". The pool's files are shared with this run; only the changed seeds go through the model."
    )
    if st.button("Score the new seed set", type="primary", key="seed_score", disabled=changes == 0):
        index_or_hint(run)
        target = run_dir(check_name(name, "run name"))
        with tempfile.TemporaryDirectory() as tmp:
            files = [new_pairs_file(Path(tmp), added, upload)] if (added or upload) else []
            adds = [read_seed_file(run, f) for f in files]
            edit = SeedEdit(add=adds[0] if adds else None, drop=dropped)
            with st.spinner("Scoring the new seeds against the index…"):
                rescore(run.path, target, edit, runner=run_model(str(run.path)))
        added.clear()
        choose_run(target.name)
        st.success(f"Saved as {target.name}; every page now shows it.")
        st.rerun()
    st.caption(f"New seed sets are runs in `{runs_dir()}`, listed in the sidebar beside this one.")
