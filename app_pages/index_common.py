"""UI helpers of the pages that use a run's gradient index (Seeds, Ask the pool): the index or a hint on how to
add it, the run's model loaded once, pasted or uploaded pairs as a file."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from gdig.atomic import write_jsonl
from gdig.pipeline.index_run import RunModel
from gdig.pipeline.query import pool_languages
from gdig.rundir.index import NoIndexError, RunIndex, load_index
from gdig.rundir.results import RunResults


def index_or_hint(run: RunResults) -> RunIndex:
    """The run's index, or a note that says how to add it, and a stop."""
    try:
        return load_index(run.path)
    except NoIndexError:
        st.warning(
            "This run has no gradient index (it was scored before the index existed, or with --index-dim 0). "
            f"Add it with one pass over the pool: `gdig index {run.path}`; then new seed sets and questions take "
            "seconds."
        )
        st.stop()


@st.cache_resource(max_entries=1, show_spinner="Loading the run's model…")
def run_model(path: str) -> RunModel:
    """The run's model, tracked modules and curvature, loaded once per run."""
    return RunModel(path)


def new_pairs_file(folder: Path, pasted: list[dict], upload) -> Path:
    """One file of the pairs to add: the uploaded file as it is, else the pasted pairs as JSONL (with the run's
    languages where a pasted pair has none)."""
    if upload is not None:
        if pasted:
            raise ValueError("add pasted pairs or a file, not both at once: clear the pasted pairs or the file")
        path = folder / Path(upload.name).name
        path.write_bytes(upload.getvalue())
        return path
    return write_jsonl(folder / "pasted.jsonl", pasted)


def with_languages(run: RunResults, record: dict) -> dict:
    """A pasted pair with the languages the run would give it (its defaults, else its pool's)."""
    return pool_languages(run) | {k: v for k, v in record.items() if v}
