"""UI helpers shared by the pages: run picker, persistent settings, cached loading, error guard.
Layout only; everything computed comes from `gdig`."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import streamlit as st

from gdig.jobs import list_runs
from gdig.results import RunError, RunResults, load_overrides, load_run
from gdig.select import GradientClusterer, Selection, SelectionConfig, quality_mask, select_run

RUN_KEY = "run_path"
DEFAULTS = {"rule": "fraction of seeds helped", "tau": 1.0, "min_mean": 0.0, "clusters": 10, "budget": 0,
            "strategy": "uniform", "within": "quality", "seed": 0, "color_by": "cluster"}  # fmt: skip
MAP_POINTS = 20_000  # the map shows at most this many points (a fixed random sample), and says so


def runs_dir() -> Path:
    return Path(os.environ.get("GDIG_RUNS_DIR", "runs"))


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


# -- persistent settings (widget state survives page switches) ------------------------------------------------


def setting(name: str):
    return st.session_state.get(f"_{name}", DEFAULTS.get(name))


def widget_kwargs(name: str) -> dict:
    """Key, current value and a callback that keeps the value when the widget is not on screen."""
    key = f"w_{name}"
    if key not in st.session_state:
        st.session_state[key] = setting(name)

    def keep() -> None:
        st.session_state[f"_{name}"] = st.session_state[key]

    st.session_state[f"_{name}"] = st.session_state[key]
    return {"key": key, "on_change": keep}


# -- run picker ------------------------------------------------------------------------------------------------


def sidebar_run_picker() -> None:
    runs = list_runs(runs_dir())
    current = st.session_state.get(RUN_KEY) or st.query_params.get("run")
    if current and not Path(current).is_absolute() and not Path(current).exists():
        current = str(runs_dir() / current)
    options = [str(r["path"]) for r in runs]
    labels = {str(r["path"]): f"{r['name']} · {r['state']}" for r in runs}
    if current and current not in options and Path(current).is_dir():
        options.insert(0, current)
        labels[current] = Path(current).name
    if not options:
        st.sidebar.caption(f"No runs yet in `{runs_dir()}`.")
        return
    index = options.index(current) if current in options else 0
    choice = st.sidebar.selectbox("Run", options, index=index, format_func=lambda p: labels.get(p, p), key="run_pick")
    st.session_state[RUN_KEY] = choice
    st.query_params["run"] = Path(choice).name if Path(choice).parent == runs_dir() else choice


def run_stamp(path: str) -> float:
    p = Path(path) / "influence.npy"
    return p.stat().st_mtime if p.exists() else 0.0


@st.cache_resource(max_entries=4, show_spinner="Loading the run…")
def _cached_run(path: str, stamp: float) -> RunResults:
    run = load_run(path)
    _ = run.frac_helped, run.mean_influence  # computed once per run, reused on every slider move
    return run


def current_run() -> RunResults:
    """The chosen finished run, or a hint and a stop."""
    path = st.session_state.get(RUN_KEY)
    if not path:
        st.info("Choose a run in the sidebar, or start one on the **Run** page.")
        st.stop()
    try:
        return _cached_run(path, run_stamp(path))
    except RunError as e:
        st.warning(f"{e}")
        st.stop()


def selection_config(run: RunResults, budget: int | None = None) -> SelectionConfig:
    ov = load_overrides(run.path)
    use_mean = setting("rule") == "mean influence"
    return SelectionConfig(tau=None if use_mean else float(setting("tau")),
                           min_mean=float(setting("min_mean")) if use_mean else None,
                           clusters=int(setting("clusters")), budget=budget, strategy=setting("strategy"),
                           within=setting("within"), seed=int(setting("seed")), include=ov.include,
                           exclude=ov.exclude)  # fmt: skip


def kept_mask(run: RunResults, cfg: SelectionConfig) -> np.ndarray:
    return quality_mask(run.frac_helped, run.mean_influence, cfg.tau, cfg.min_mean, run.ids, cfg.include, cfg.exclude)


@st.cache_data(max_entries=32, show_spinner="Clustering gradients…")
def _cached_labels(path: str, stamp: float, kept_bytes: bytes, k: int, seed: int) -> np.ndarray:
    run = _cached_run(path, stamp)
    rows = np.flatnonzero(np.frombuffer(kept_bytes, dtype=bool))
    return GradientClusterer(k, seed).fit_predict(run.sketch[rows])


def current_selection(run: RunResults, cfg: SelectionConfig) -> Selection:
    """Quality rule + clusters (cached per rule and K) + resampling to the budget."""
    kept = kept_mask(run, cfg)
    labels = _cached_labels(str(run.path), run_stamp(str(run.path)), kept.tobytes(), cfg.clusters, cfg.seed)
    return select_run(run, cfg, labels=labels)


def clamp_clusters(run: RunResults, cfg: SelectionConfig) -> int:
    """K cannot exceed the kept set; say so instead of failing."""
    n_kept = int(kept_mask(run, cfg).sum())
    if n_kept == 0:
        st.warning("No candidate passes the quality rule: loosen the threshold on the Influence page.")
        st.stop()
    if cfg.clusters > n_kept:
        st.caption(f"K lowered to {n_kept}: only {n_kept} candidates are kept.")
        cfg.clusters = n_kept
    return cfg.clusters
