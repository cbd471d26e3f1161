"""New run: model, candidate and seed files, settings; the work runs in a background process that this page
follows through status.json (a reload or another tab re-attaches)."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import streamlit as st

from app_pages.common import RUN_KEY, guard, runs_dir
from gdig.config import DEFAULT_MODULES, HESSIANS, NORMALIZATIONS, DataConfig, ScoreConfig
from gdig.data import DataError, load_dataset
from gdig.jobs import cancel_job, job_state, start_job

st.header("New run")


def _save_upload(upload, folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(upload.name).name)
    path = folder / name
    path.write_bytes(upload.getvalue())
    return str(path)


def _data_input(label: str, key: str, help_: str):
    source = st.radio(f"{label} from", ["path on this machine", "upload"], horizontal=True, key=f"{key}_src")
    if source == "upload":
        return st.file_uploader(label, type=["jsonl", "json", "csv", "tsv", "parquet"], key=f"{key}_up", help=help_)
    return st.text_input(f"{label} file", key=f"{key}_path", help=help_ + " Two text files: `src.txt,tgt.txt`.")


def _form() -> None:
    default_name = dt.datetime.now().strftime("run-%Y%m%d-%H%M%S")
    name = st.text_input("Run name", value=default_name, help="A folder of this name is made under the runs folder.")
    model = st.text_input("Model", placeholder="path/to/model or org/name",
                          help="A local model folder, or a hub id already in the local cache (no downloads). "
                               "G-DIG scores with the model fine-tuned on the candidate pool.")  # fmt: skip
    c1, c2 = st.columns(2)
    with c1:
        cands = _data_input("Candidates", "cands", "The pool to select from.")
    with c2:
        seeds = _data_input("Seeds", "seeds", "A small trusted set of high-quality examples.")
    with st.expander("Settings", expanded=False):
        a, b, c = st.columns(3)
        hessian = a.selectbox("Hessian", HESSIANS, help="EK-FAC (default), K-FAC, or identity (gradient dot products).")
        damping = b.number_input("Relative damping", value=0.1, min_value=1e-6, format="%.4f",
                                 help="lambda = this x mean eigenvalue, per module.")  # fmt: skip
        normalize = c.selectbox("Normalisation", NORMALIZATIONS, index=NORMALIZATIONS.index("unit"),
                                help="unit (default): cosine in the preconditioned metric; none: the paper's "
                                "raw I(z,s); relatif: RelatIF.")  # fmt: skip
        seed_batch = a.number_input("Seed batch", value=1, min_value=1, help="Average seeds in groups of k.")
        batch_size = b.number_input("Batch size", value=8, min_value=1)
        max_length = c.number_input("Max length (tokens)", value=512, min_value=8)
        fit_examples = a.number_input("Fit curvature on (0 = all)", value=0, min_value=0)
        sketch_dim = b.number_input("Sketch dimension", value=1024, min_value=16)
        device = c.selectbox("Device", ["auto", "cpu", "cuda"])
        modules = st.text_input("Tracked modules (regex)", value=DEFAULT_MODULES)
        trg_lang = st.text_input("Default target language", value="", help="Used when a record has no trg_lang.")
        trust = st.checkbox("Trust remote code", value=False, help="Runs the model repository's own Python code.")
    if st.button("Start", type="primary"):
        run_dir = runs_dir() / re.sub(r"[^A-Za-z0-9_.-]", "_", name.strip() or default_name)
        if run_dir.exists():
            st.error(f"A run named '{run_dir.name}' exists already; choose another name.")
            return
        if not model.strip() or not cands or not seeds:
            st.error("Give a model, a candidate file and a seed file.")
            return
        inputs = runs_dir() / ".inputs" / run_dir.name
        paths = [c if isinstance(c, str) else _save_upload(c, inputs) for c in (cands, seeds)]
        data = DataConfig(max_length=int(max_length), trg_lang=trg_lang.strip() or None)
        try:  # validate before starting: a bad file is reported here and nothing is started
            for p, role in zip(paths, ("candidate", "seed"), strict=True):
                load_dataset(p, data.prompt_template, data.src_lang, data.trg_lang, role=role)
        except DataError as e:
            st.error(f"Bad input file: {e}")
            return
        cfg = ScoreConfig(model=model.strip(), candidates=paths[0], seeds=paths[1], out=str(run_dir), hessian=hessian,
                          damping_relative=float(damping), normalize=normalize, seed_batch=int(seed_batch),
                          modules=modules, batch_size=int(batch_size), fit_examples=int(fit_examples) or None,
                          sketch_dim=int(sketch_dim), device=device, trust_remote_code=trust, data=data)  # fmt: skip
        start_job(cfg)
        st.session_state[RUN_KEY] = str(run_dir)
        st.rerun()


@st.fragment(run_every=1.0)
def progress(run_dir: str) -> None:
    state = job_state(run_dir)
    st.subheader(f"Run `{Path(run_dir).name}`")
    if state.finished:
        st.success("Finished. Open the Influence page to inspect it.")
        st.page_link("app_pages/influence.py", label="Influence", icon=":material/bar_chart:")
        return
    if state.error:
        st.error(f"The run stopped: {state.error}")
        settings = Path(run_dir) / "job-settings.json"
        if settings.exists():
            st.caption("What was computed is kept: resuming continues after the last complete chunk.")
            if st.button("Resume", key="resume"):
                start_job(ScoreConfig.from_dict(json.loads(settings.read_text())), resume=True)
                st.rerun()
        return
    label = f"{state.stage}: {state.done}/{state.total}"
    if state.rate:
        label += f" · {state.rate:.1f}/s"
    if state.eta_seconds is not None:
        label += f" · about {int(state.eta_seconds)} s left in this stage"
    st.progress(state.fraction, text=label)
    if state.running and st.button("Cancel", key="cancel"):
        cancel_job(run_dir, grace_seconds=5)
        st.rerun()


with guard():
    current = st.session_state.get(RUN_KEY)
    if current and Path(current).is_dir() and not job_state(current).finished:
        progress(current)
        st.divider()
    _form()
