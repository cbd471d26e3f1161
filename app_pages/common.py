"""UI helpers shared by the pages: the run picker (confined to the runs folder), settings that persist in the
run, cached loading, the error guard. Layout only; everything computed comes from `gdig`."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from gdig.names import check_name
from gdig.options import specs
from gdig.rundir.curation import load_curation, load_overrides, save_curation
from gdig.rundir.index import index_note
from gdig.rundir.layout import INFLUENCE, read_config
from gdig.rundir.results import RunError, RunResults, load_run
from gdig.rundir.status import format_seconds
from gdig.selection.clusters import GradientClusterer
from gdig.selection.select import Selection, SelectionConfig
from gdig.studio.jobs import list_runs
from gdig.studio.views import kept_mask, selection_on_run

RUN_KEY = "run_name"  # the chosen run: a folder name under runs_dir(), never a path
# The selection settings a page can change, derived from SelectionConfig (their defaults and help too): every one
# but the method (the pages show G-DIG's) and the hand decisions (saved apart: gdig.selection.decisions).
SETTINGS = tuple(name for name in specs(SelectionConfig) if name not in ("method", "include", "exclude"))
UI_DEFAULTS = {"color_by": "cluster"}
MAP_POINTS = 20_000  # the map shows at most this many points (a fixed random sample), and says so


def runs_dir() -> Path:
    return Path(os.environ.get("GDIG_RUNS_DIR", "runs"))


def run_dir(name: str) -> Path:
    """The folder of run `name` inside the runs folder; a name that could point elsewhere is refused."""
    return runs_dir() / check_name(name, "run name")


@contextlib.contextmanager
def guard():
    """Show any failure as a plain message, never a traceback."""
    try:
        yield
    except RunError as e:
        st.error(f"This run cannot be shown: {e}")
    except (ValueError, FileNotFoundError) as e:
        st.error(str(e))
    except Exception as e:  # noqa: BLE001 - the UI must not show a traceback
        st.error(f"Something went wrong: {type(e).__name__}: {e}")


# -- settings: session state while the app is open, saved in the run (curation.json) across reloads -----------


def _defaults() -> dict:
    d = SelectionConfig()
    return {name: getattr(d, name) for name in SETTINGS} | UI_DEFAULTS


def _load_run_settings() -> None:
    """When the chosen run changes, its saved settings (or the defaults) become the widgets' values."""
    name = st.session_state.get(RUN_KEY)
    if st.session_state.get("_settings_of") == name:
        return
    saved = load_curation(run_dir(name)) if name else {}
    for key, default in _defaults().items():
        value = saved.get(key, default)
        value = 0 if key == "budget" and value is None else value
        st.session_state[f"_{key}"] = value
        st.session_state[f"w_{key}"] = value
    st.session_state["_settings_of"] = name


def setting(name: str):
    _load_run_settings()
    return st.session_state.get(f"_{name}", _defaults().get(name))


def widget_kwargs(name: str) -> dict:
    """Key, current value and a callback that keeps the value (and saves it in the run) when it changes."""
    _load_run_settings()
    key = f"w_{name}"
    if key not in st.session_state:
        st.session_state[key] = setting(name)

    def keep() -> None:
        st.session_state[f"_{name}"] = st.session_state[key]
        run = st.session_state.get(RUN_KEY)
        if run and run_dir(run).is_dir():
            save_curation(run_dir(run), {k: st.session_state.get(f"_{k}") for k in _defaults()})

    st.session_state[f"_{name}"] = st.session_state[key]
    return {"key": key, "on_change": keep}


# -- run picker ------------------------------------------------------------------------------------------------


def _picked() -> None:
    st.session_state[RUN_KEY] = st.session_state["run_pick"]


def choose_run(name: str) -> None:
    """Make `name` the run every page shows (sidebar, URL and pages follow on the next rerun)."""
    st.session_state[RUN_KEY] = name
    st.query_params["run"] = name


def sidebar_run_picker() -> None:
    """The sidebar's run choice, kept in step with the session and the `?run=` URL parameter. Only folders in
    the runs folder can be chosen; an unknown name is an error, never silently another run."""
    runs = list_runs(runs_dir())
    names = [r["name"] for r in runs]
    wanted = st.session_state.get(RUN_KEY) or st.query_params.get("run")
    if wanted and wanted not in names:
        st.sidebar.error(f"No run named '{wanted}' in the runs folder `{runs_dir()}`.")
        wanted = None
    elif not wanted and names:
        wanted = names[0]
    st.session_state[RUN_KEY] = wanted
    if not names:
        st.sidebar.caption(f"No runs yet in `{runs_dir()}`.")
        return
    st.session_state["run_pick"] = wanted
    # Plain names as labels: a label that changed with the run's state (running -> failed) while the list was
    # open would come back from the browser as a value that names no run.
    st.sidebar.selectbox("Run", names, key="run_pick", on_change=_picked, index=None, placeholder="Choose a run")
    if wanted:
        st.query_params["run"] = wanted
        note = index_note(read_config(run_dir(wanted)) or {})
        if note:
            st.sidebar.caption(note)


def live(body, key: str, running: bool, *args) -> None:
    """Run `body(*args)` as a fragment that re-runs every second while a job is running, and not at all when
    none is (an open tab with no job costs the server nothing). When the job stops, the whole page re-runs once,
    so that everything on it (tables, buttons, the sidebar) shows the new state."""
    was = st.session_state.get(f"_live_{key}", False)
    st.session_state[f"_live_{key}"] = running

    def wrapped() -> None:
        still = body(*args)
        if was or running:
            st.session_state[f"_live_{key}"] = bool(still)
            if not still:
                st.rerun(scope="app")

    st.fragment(wrapped, run_every=1.0 if running else None)()


def progress_label(state) -> str:
    """Stage counter, rate and the time left in the stage and in the whole job."""
    label = f"{state.stage}: {state.done:,}/{state.total:,}"
    if state.rate:
        label += f" · {state.rate:.1f}/s"
    if state.eta_seconds is not None:
        label += f" · stage {format_seconds(state.eta_seconds)} left"
    if state.job_eta_seconds is not None:
        label += f" · about {format_seconds(state.job_eta_seconds)} left overall"
    return label


def open_in_explore(candidate_id: str) -> None:
    """Open one candidate's explanation on the Explore page (a click on a row of pairs elsewhere)."""
    st.session_state["ex_query"] = candidate_id
    st.session_state["ex_id"] = candidate_id
    st.switch_page("app_pages/explore.py")


def bars(counts: np.ndarray, edges: np.ndarray, **trace) -> go.Bar:
    """A histogram's bars from counts computed on the server (gdig.studio.views.histogram_counts): a million
    values never travel to the browser."""
    return go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=counts, width=np.diff(edges), **trace)


def run_stamp(path: str) -> float:
    p = Path(path) / INFLUENCE
    return p.stat().st_mtime if p.exists() else 0.0


@st.cache_resource(max_entries=4, show_spinner="Loading the run…")
def cached_run(path: str, stamp: float) -> RunResults:
    run = load_run(path)
    _ = run.frac_helped, run.mean_influence  # computed once per run, reused on every slider move
    return run


def current_run() -> RunResults:
    """The chosen finished run, or a hint and a stop."""
    name = st.session_state.get(RUN_KEY)
    if not name:
        st.info("Choose a run in the sidebar, or start one on the **New run** page.")
        st.stop()
    try:
        path = str(run_dir(name))
        return cached_run(path, run_stamp(path))
    except RunError as e:
        st.warning(f"{e}")
        st.stop()


def selection_config(run: RunResults) -> SelectionConfig:
    """The selection the pages show: the run's saved settings (budget 0: every kept candidate) and overrides."""
    ov = load_overrides(run.path)
    return SelectionConfig(**{k: setting(k) for k in SETTINGS}, include=ov.include, exclude=ov.exclude)


def help_for(name: str) -> str:
    """The help text of a selection setting, from SelectionConfig (the one source of it)."""
    return specs(SelectionConfig)[name].help


def label_for(name: str) -> str:
    """The label of a selection setting's widget, from SelectionConfig."""
    return specs(SelectionConfig)[name].label


@st.cache_data(max_entries=32, show_spinner="Clustering gradients…")
def _cached_labels(path: str, stamp: float, kept_bytes: bytes, k: int, seed: int) -> np.ndarray:
    run = cached_run(path, stamp)
    rows = np.flatnonzero(np.frombuffer(kept_bytes, dtype=bool))
    return GradientClusterer(k, seed).fit_predict(run.cluster_features[rows])


def current_selection(run: RunResults, stop_when_empty: bool = True) -> tuple[SelectionConfig, Selection]:
    """The page's settings and selection: quality rule + clusters (cached per rule and K) + resampling to the
    budget; K lowered to the kept set (and, unless `stop_when_empty` is false, the page stopped with a word when
    the rule keeps nothing)."""
    cfg = selection_config(run)
    clamp_clusters(run, cfg, stop_when_empty)
    return cfg, _selection(run, cfg)


def _selection(run: RunResults, cfg: SelectionConfig) -> Selection:
    kept = kept_mask(run, cfg)
    if not kept.any():
        return selection_on_run(run, dataclasses.replace(cfg, clusters=1), labels=np.zeros(0, np.int64))
    labels = _cached_labels(str(run.path), run_stamp(str(run.path)), kept.tobytes(), cfg.clusters, cfg.seed)
    return selection_on_run(run, cfg, labels=labels)


def clamp_clusters(run: RunResults, cfg: SelectionConfig, stop_when_empty: bool = True) -> int:
    """K cannot exceed the kept set; say so instead of failing."""
    n_kept = int(kept_mask(run, cfg).sum())
    if n_kept == 0:
        st.warning("No candidate passes the quality rule: loosen the threshold on the Influence page.")
        if stop_when_empty:
            st.stop()
        return cfg.clusters
    if cfg.clusters > n_kept:
        st.caption(f"K lowered to {n_kept}: only {n_kept} candidates are kept.")
        cfg.clusters = n_kept
    return cfg.clusters
