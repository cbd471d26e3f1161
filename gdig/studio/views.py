"""What the pages show, computed from a run and a selection: tables, summaries, comparisons and map points.
Pure functions (no Streamlit) so that each is tested; the pages only lay them out."""

from __future__ import annotations

import numpy as np
import pandas as pd

from gdig.rundir.results import RunResults
from gdig.select import Selection, SelectionConfig, apply_rule, select_run


def kept_mask(run: RunResults, cfg: SelectionConfig) -> np.ndarray:
    """Which candidates pass the selection's quality rule (with the signals' thresholds), overrides applied."""
    return apply_rule(run.frac_helped, run.mean_influence, run.ids, cfg, run.signals)[0]


def threshold_lines(run: RunResults, cfg: SelectionConfig, kept: np.ndarray) -> tuple[float, float]:
    """Where each histogram draws its threshold: the rule in force at its own threshold, the other statistic at
    the lowest value among the kept candidates (where the rule in force cuts it)."""
    tau, min_mean = cfg.thresholds
    tau_x = tau if tau is not None else float(run.frac_helped[kept].min() if kept.any() else 1.0)
    mean_x = min_mean if min_mean is not None else float(run.mean_influence[kept].min() if kept.any() else 0)
    return tau_x, mean_x


def seed_members(run: RunResults, column: int) -> pd.DataFrame:
    """The seeds averaged into influence column `column` (--seed-batch of them, one by default)."""
    batch = int(run.config.get("settings", {}).get("seed_batch", 1))
    return run.seeds.iloc[column * batch : (column + 1) * batch]


def seed_label(members: pd.DataFrame, field: str = "id") -> str:
    """A seed column's ids (or texts) as one string."""
    return (", " if field == "id" else " / ").join(members[field].astype(str))


def seed_table(run: RunResults) -> pd.DataFrame:
    """One row per seed column: how many candidates help it and their mean influence on it, hardest first (the
    seeds that few candidates help decide the tau = 1 rule)."""
    m = run.influence.shape[1]
    members = [seed_members(run, j) for j in range(m)]
    helped, mean = run.column_statistics
    table = pd.DataFrame(
        {
            "seed": [seed_label(s) for s in members],
            "helped by (share of candidates)": helped,
            "mean influence on it": mean,
            "target": [seed_label(s, "target") for s in members],
        }
    )
    return table.sort_values("helped by (share of candidates)")


def seed_rows(run: RunResults, cols: np.ndarray, values: np.ndarray) -> pd.DataFrame:
    """Seed columns with one value each (the influence of a candidate on them): seed, influence, source, target."""
    rows = []
    for c, v in zip(cols.tolist(), values.tolist(), strict=True):
        members = seed_members(run, c)
        rows.append(
            {
                "seed": seed_label(members),
                "influence": v,
                "source": seed_label(members, "prompt"),
                "target": seed_label(members, "target"),
            }
        )
    return pd.DataFrame(rows, columns=["seed", "influence", "source", "target"])


def cluster_summary(run: RunResults, sel: Selection) -> pd.DataFrame:
    """Per cluster of the kept candidates: size, how many are selected, mean scores, and its best example."""
    selected = np.zeros(run.n, bool)
    selected[sel.indices] = True
    kept_rows = np.flatnonzero(sel.kept)
    labels = sel.labels[kept_rows]
    target = run.candidates["target"].astype(str).to_numpy()
    rows = []
    for k in np.unique(labels):
        members = kept_rows[labels == k]
        rows.append(
            {
                "cluster": int(k),
                "size": len(members),
                "selected": int(selected[members].sum()),
                "mean influence": float(run.mean_influence[members].mean()),
                "fraction helped": float(run.frac_helped[members].mean()),
                "example": target[members[np.argmax(run.mean_influence[members])]][:120],
            }
        )
    return pd.DataFrame(rows, columns=["cluster", "size", "selected", "mean influence", "fraction helped", "example"])


SIGNAL_LABELS = {"length_ratio": "length ratio", "language_score": "language", "trg_lang_detected": "target lang"}


def candidate_table(run: RunResults, decisions: np.ndarray, clusters: np.ndarray) -> pd.DataFrame:
    """Every candidate with its decision, scores, loss, the signals beside them, cluster and texts (the Explore
    and Clusters tables)."""
    cand = run.candidates
    return pd.DataFrame(
        {
            "id": cand["id"].astype(str).to_numpy(),
            "decision": decisions,
            "mean influence": run.mean_influence,
            "fraction helped": run.frac_helped,
            "loss": cand["loss"].to_numpy(),
            **{label: cand[column].to_numpy() for column, label in SIGNAL_LABELS.items() if column in cand},
            "cluster": clusters,
            "prompt": cand["prompt"].astype(str).to_numpy(),
            "target": cand["target"].astype(str).to_numpy(),
        }
    )


def filter_candidates(table: pd.DataFrame, query: str = "", decision: str = "all", sort: str = "mean influence"):
    """Rows whose prompt or target contains `query` (case-insensitive, literal), with `decision` unless "all",
    sorted best first (loss and id ascending)."""
    mask = np.ones(len(table), bool)
    if query:
        q = query.lower()
        in_prompt = table["prompt"].str.lower().str.contains(q, regex=False)
        mask &= (in_prompt | table["target"].str.lower().str.contains(q, regex=False)).to_numpy()
    if decision != "all":
        mask &= table["decision"].to_numpy() == decision
    return table[mask].sort_values(sort, ascending=sort in ("loss", "id"), kind="stable")


def compare_with_random(run: RunResults, sel: Selection, seed: int) -> tuple[pd.DataFrame, np.ndarray, int]:
    """The selection against a random one of the same size from the whole pool: mean scores, target length and
    loss of each; also the random selection's rows and the overlap."""
    rnd = select_run(run, SelectionConfig(method="random", budget=len(sel.indices), seed=seed)).indices
    lengths = run.candidates["target"].astype(str).str.len().to_numpy()
    loss = run.candidates["loss"].to_numpy()
    columns = {
        "mean influence (mean)": run.mean_influence,
        "fraction helped (mean)": run.frac_helped,
        "target length (mean chars)": lengths,
        "loss (mean)": loss,
    }
    table = pd.DataFrame(
        {"": ["G-DIG", "random"]} | {k: [v[sel.indices].mean(), v[rnd].mean()] for k, v in columns.items()}
    )
    return table, rnd, len(np.intersect1d(sel.indices, rnd))


def map_sample(n: int, limit: int, seed: int = 0) -> np.ndarray:
    """The rows the map draws: all, or a fixed random sample of `limit` (sorted) when there are more."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))


def legend_order(groups: np.ndarray) -> list[str]:
    """Map legend groups: clusters by number, then the named groups alphabetically."""
    return sorted(set(groups.tolist()), key=lambda g: (not g.isdigit(), int(g) if g.isdigit() else 0, g))
