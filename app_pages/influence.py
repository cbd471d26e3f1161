"""Influence: how many seeds each candidate helps, the quality threshold on it, and which seeds are hard."""

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from app_pages.common import (
    bars,
    cached_run,
    current_run,
    guard,
    help_for,
    label_for,
    run_stamp,
    selection_config,
    widget_kwargs,
)
from gdig.selection.select import COMBINATIONS, DEDUPE
from gdig.selection.signal_table import BY_NAME, label, thresholded, what_signals_catch
from gdig.studio.views import fraction_bins, histogram_counts, nothing_kept_reason, rule_on_run, seed_table

BLUE = "#2563eb"


@st.cache_data(max_entries=64, show_spinner=False)
def _histogram(path: str, stamp: float, what: str | int, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Counts and edges of one histogram of the run: "fraction" helped, "mean" influence, or a seed column."""
    run = cached_run(path, stamp)
    if what == "fraction":
        return histogram_counts(run.frac_helped, fraction_bins(bins))
    values = run.mean_influence if what == "mean" else run.influence[:, what]
    return histogram_counts(values, bins)


def signals_controls(run) -> None:
    """The signals beside influence (those the run has): combined with it (weakest link or rank average), and
    thresholds of their own."""
    names = ", ".join(label(k) for k in run.signals)
    with st.expander(f"Signals beside influence: {names}"):
        st.caption(what_signals_catch())
        if any(BY_NAME[k].adequacy for k in run.signals if k in BY_NAME):  # a run made with --adequacy
            st.checkbox(label_for("adequacy"), help=help_for("adequacy"), **widget_kwargs("adequacy"))
        combine = st.radio(
            label_for("combine"),
            list(COMBINATIONS),
            horizontal=True,
            help=help_for("combine"),
            **widget_kwargs("combine"),
        )
        if combine in ("weakest", "rank-average"):
            name = "min_weakest" if combine == "weakest" else "min_combined"
            st.slider(label_for(name), 0.0, 1.0, step=0.01, help=help_for(name), **widget_kwargs(name))
        for column, signal in zip(st.columns(len(thresholded())), thresholded(), strict=True):
            column.number_input(
                label_for(signal.threshold),
                min_value=0.0,
                max_value=signal.threshold_max,
                step=signal.threshold_step,
                help=help_for(signal.threshold),
                placeholder="off",
                **widget_kwargs(signal.threshold),
            )


def duplicates_controls(run) -> None:
    """Keep one pair per duplicate group (exact or near), with the pool's duplicate counts once asked for."""
    with st.expander("Duplicates: keep one pair per group"):
        level = st.radio(
            label_for("dedupe"), list(DEDUPE), horizontal=True, help=help_for("dedupe"), **widget_kwargs("dedupe")
        )
        if level == "off":
            st.caption("Choose exact or near to find the pool's duplicates (seconds even at 1,000,000 pairs).")
            return
        with st.spinner("Finding duplicates (once per run)…"):
            c = run.duplicates.counts()
        st.caption(
            f"{c['exact_duplicates']:,} pairs have an exact duplicate ({c['exact_extra']:,} beyond one per group); "
            f"{c['near_duplicates']:,} a near one ({c['near_extra']:,} beyond one per group). Explore's "
            "“with a duplicate” lists them group by group."
        )


st.header("Influence")
run = current_run()
with guard():
    m = run.influence.shape[1]
    st.caption(
        f"{run.n:,} candidates x {m} seed columns · positive influence = training on the candidate is "
        "predicted to lower the seed's loss"
    )
    labels = {"mean": "mean influence", "fraction": "fraction of seeds helped"}
    rule = st.radio(
        "Quality rule",
        list(labels),
        format_func=labels.get,
        horizontal=True,
        **widget_kwargs("rule"),
        help=help_for("rule"),
    )
    if rule == "fraction":
        st.slider(
            "tau: keep candidates that help at least this fraction of seeds (1 = the paper's rule)",
            0.0,
            1.0,
            step=1.0 / max(m, 1),
            **widget_kwargs("tau"),
        )
    else:
        lo, hi = float(run.mean_influence.min()), float(run.mean_influence.max())
        st.number_input(
            f"Keep candidates with mean influence at least (range {lo:.3g} to {hi:.3g})",
            format="%.6g",
            **widget_kwargs("min_mean"),
        )
    signals_controls(run)
    duplicates_controls(run)
    st.caption("The rule is saved with the run: a reload, another tab and the other pages use it.")
    cfg = selection_config(run)
    kept, _, dropped = rule_on_run(run, cfg)
    a, b, c = st.columns(3)
    a.metric("Kept", f"{int(kept.sum()):,}")
    rejected = f"of them {dropped:,} as duplicates" if cfg.dedupe != "off" else None
    b.metric("Rejected", f"{int((~kept).sum()):,}", help=rejected)
    c.metric("Kept share", f"{kept.mean():.1%}")
    if cfg.dedupe != "off":
        st.caption(f"Rejected as duplicates of a better pair ({cfg.dedupe}): {dropped:,}.")
    reason = nothing_kept_reason(run, cfg, kept)
    if reason:
        st.warning(reason)
    if cfg.include or cfg.exclude:
        st.caption(f"Manual overrides in force: {len(cfg.include)} included, {len(cfg.exclude)} excluded.")

    def histogram(counts: np.ndarray, edges: np.ndarray, title: str, colour: str, threshold=None) -> go.Figure:
        fig = go.Figure(bars(counts, edges, marker_color=colour))
        if threshold is not None:
            fig.add_vline(x=threshold, line_color="#dc2626", line_dash="dash", annotation_text="threshold")
        fig.update_layout(title=title, height=320, margin=dict(l=10, r=10, t=40, b=10), bargap=0.05)
        return fig

    left, right = st.columns(2)
    tau_x, mean_x = cfg.thresholds  # a line on the statistic in force only
    frac_counts = _histogram(str(run.path), run_stamp(str(run.path)), "fraction", m)
    mean_counts = _histogram(str(run.path), run_stamp(str(run.path)), "mean", 60)
    left.plotly_chart(histogram(*frac_counts, "Fraction of seeds helped", BLUE, tau_x), key="h_frac")
    right.plotly_chart(histogram(*mean_counts, "Mean influence", BLUE, mean_x), key="h_mean")

    st.subheader("Seeds")
    table = seed_table(run)
    st.caption("Seeds that few candidates help are the hard ones: the tau = 1 rule is decided by them.")
    st.dataframe(table, hide_index=True, height=260)
    j = st.selectbox(
        "Distribution of influence on one seed", range(m), format_func=lambda i: table["seed"].loc[i], key="seed_pick"
    )
    fig = histogram(*_histogram(str(run.path), run_stamp(str(run.path)), int(j), 60), "", "#7c3aed")
    fig.add_vline(x=0, line_color="#111827")
    fig.update_layout(height=280, margin=dict(l=10, r=10, t=10, b=10))
    st.plotly_chart(fig, key="h_seed")
