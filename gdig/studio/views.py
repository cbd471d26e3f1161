"""What the pages show, computed from a run and a selection: tables, summaries, comparisons and map points.
Pure functions (no Streamlit) so that each is tested; the pages only lay them out."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from gdig.rundir.results import RunResults
from gdig.selection.decisions import HAND_LABELS
from gdig.selection.select import Selection, SelectionConfig, rule_decisions, select_run
from gdig.selection.signal_table import shown_columns


def kept_mask(run: RunResults, cfg: SelectionConfig) -> np.ndarray:
    """Which candidates pass the selection's quality rule (with the signals' thresholds and one pair per
    duplicate group when asked), overrides applied."""
    return rule_on_run(run, cfg)[0]


# Settings that only cluster and resample the kept set: changing them leaves the rule's decisions as they were.
AFTER_THE_RULE = ("clusters", "budget", "strategy", "within", "seed")


def rule_on_run(run: RunResults, cfg: SelectionConfig) -> tuple[np.ndarray, np.ndarray, int]:
    """(kept, the rule's order, kept pairs dropped as duplicates) on a loaded run: computed once per run and rule
    setting, however many times a page asks in a rerun (the K check, the selection, the counts) and across the
    reruns that move only K or the budget. The arrays are read-only: they are shared."""
    key = json.dumps({k: v for k, v in cfg.to_dict().items() if k not in AFTER_THE_RULE}, sort_keys=True, default=str)
    memo = run.__dict__.setdefault("_rule_decisions", {})
    found = memo.get(key)
    if found is None:
        duplicates = run.duplicates if cfg.dedupe != "off" else None
        ranks = None if cfg.combine == "influence" else run.rule_ranks(cfg.rule, cfg.adequacy)
        args = (run.frac_helped, run.mean_influence, run.id_index, cfg, run.signals, run.quality, duplicates, ranks)
        kept, order, dropped = rule_decisions(*args)
        for array in (kept, order):
            array.setflags(write=False)
        if len(memo) >= 8:  # a curator trying thresholds: keep the last few, not every one
            memo.clear()
        found = memo[key] = (kept, order, dropped)
    return found


def selection_on_run(run: RunResults, cfg: SelectionConfig, labels: np.ndarray | None = None) -> Selection:
    """`select_run` with the rule's decisions from `rule_on_run` (the rule is applied once per setting)."""
    return select_run(run, cfg, labels=labels, decisions=rule_on_run(run, cfg) if cfg.method == "gdig" else None)


def nothing_kept_reason(run: RunResults, cfg: SelectionConfig, kept: np.ndarray) -> str | None:
    """Why a rule keeps no candidate and what would keep some (None when it keeps any)."""
    if kept.any() or run.n == 0:
        return None
    if cfg.rule == "fraction":
        best = float(run.frac_helped.max())
        top = int((run.frac_helped >= best).sum())
        return (
            f"No candidate helps at least {cfg.tau:.0%} of the seeds: the most any candidate helps is {best:.0%} "
            f"({top:,} candidate{'s' if top != 1 else ''}). With many seeds the paper's rule (tau = 1) often keeps "
            f"nothing; lower tau to {best:.2f} or below, or use the mean-influence rule."
        )
    best = float(run.mean_influence.max())
    if best < cfg.min_mean:
        return (
            f"No candidate has a mean influence of at least {cfg.min_mean:.3g}: the highest is {best:.3g}. Lower the "
            "threshold."
        )
    return "The influence rule keeps some candidates, but the signals' floor or the manual overrides reject them all."


def seed_members(run: RunResults, column: int) -> pd.DataFrame:
    """The seeds averaged into influence column `column` (--seed-batch of them, one by default)."""
    batch = run.settings.seed_batch
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
    target = run.candidates["target"]
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
                "example": str(target.iloc[members[np.argmax(run.mean_influence[members])]])[:120],
            }
        )
    return pd.DataFrame(rows, columns=["cluster", "size", "selected", "mean influence", "fraction helped", "example"])


def candidate_table(
    run: RunResults, decisions: np.ndarray, clusters: np.ndarray, rows: np.ndarray | None = None
) -> pd.DataFrame:
    """Candidates `rows` (all by default) with their decision, scores, loss, the signals beside them, cluster and
    texts (the Explore and Clusters tables). `decisions` cover every candidate, `clusters` the rows given."""
    rows = np.arange(run.n) if rows is None else np.asarray(rows, np.int64)
    cand = run.candidates
    return pd.DataFrame(
        {
            "id": cand["id"].iloc[rows].astype(str).to_numpy(),
            "decision": decisions[rows],
            "mean influence": run.mean_influence[rows],
            "fraction helped": run.frac_helped[rows],
            "loss": cand["loss"].to_numpy()[rows],
            **{label: cand[column].to_numpy()[rows] for column, label in shown_columns().items() if column in cand},
            "cluster": clusters,
            "prompt": cand["prompt"].iloc[rows].astype(str).to_numpy(),
            "target": cand["target"].iloc[rows].astype(str).to_numpy(),
        }
    )


@dataclass(frozen=True)
class SearchIndex:
    """What searching and sorting a run's candidates needs, built once per run: the lower-cased texts as one
    Arrow array (a substring search over 1,000,000 pairs in tens of milliseconds) and every row order the table
    offers (a filtered view is then ordered without a sort)."""

    text: pa.Array
    orders: dict[str, np.ndarray]

    @classmethod
    def of(cls, run: RunResults) -> SearchIndex:
        """The index of a run's candidates."""
        cand = run.candidates
        ids = cand["id"].astype(str)
        both = ids + "\x00" + cand["prompt"].astype(str) + "\x00" + cand["target"].astype(str)
        keys = {
            "mean influence": -run.mean_influence,
            "fraction helped": -run.frac_helped,
            "loss": cand["loss"].to_numpy(),
            "id": ids.to_numpy(),
        }
        orders = {name: np.argsort(key, kind="stable") for name, key in keys.items()}
        return cls(pc.utf8_lower(pa.array(both.to_numpy(), pa.large_string())), orders)


SORT_KEYS = ("mean influence", "fraction helped", "loss", "id")


def find_rows(
    run: RunResults,
    index: SearchIndex,
    decisions: np.ndarray,
    query: str = "",
    decision: str = "all",
    sort: str = "mean influence",
) -> np.ndarray:
    """Rows whose id, prompt or target contains `query` (case-insensitive, literal), with `decision` unless "all",
    sorted best first (loss and id ascending)."""
    mask = np.ones(run.n, bool)
    if query:
        mask &= pc.match_substring(index.text, query.lower()).to_numpy(zero_copy_only=False)
    if decision != "all":
        mask &= decisions == decision
    order = index.orders[sort]
    return order[mask[order]]


def compare_with_random(run: RunResults, sel: Selection, seed: int) -> tuple[pd.DataFrame, np.ndarray, int]:
    """The selection against a random one of the same size from the whole pool: mean scores, target length and
    loss of each; also the random selection's rows and the overlap."""
    rnd = select_run(run, SelectionConfig(method="random", budget=len(sel.indices), seed=seed)).indices
    target, loss = run.candidates["target"], run.candidates["loss"].to_numpy()
    columns = {
        "mean influence (mean)": lambda rows: run.mean_influence[rows].mean(),
        "fraction helped (mean)": lambda rows: run.frac_helped[rows].mean(),
        "target length (mean chars)": lambda rows: target.iloc[rows].astype(str).str.len().mean(),
        "loss (mean)": lambda rows: loss[rows].mean(),
    }
    table = pd.DataFrame({"": ["G-DIG", "random"]} | {k: [f(sel.indices), f(rnd)] for k, f in columns.items()})
    return table, rnd, len(np.intersect1d(sel.indices, rnd))


def histogram_counts(values: np.ndarray, bins: int | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(counts, edges) of the finite values: the page draws bars from them, so a histogram of 1,000,000
    values sends 60 numbers to the browser, not the values."""
    values = np.asarray(values)
    return np.histogram(values[np.isfinite(values)], bins)


def fraction_bins(m: int) -> np.ndarray:
    """Histogram edges for a fraction of m seed columns: one bin centred on each k / m."""
    return (np.arange(m + 2) - 0.5) / max(m, 1)


def map_sample(n: int, limit: int, seed: int = 0) -> np.ndarray:
    """The rows the map draws: all, or a fixed random sample of `limit` (sorted) when there are more."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))


def legend_order(groups: np.ndarray) -> list[str]:
    """Map legend groups: clusters by number, then the named groups alphabetically."""
    return sorted(set(groups.tolist()), key=lambda g: (not g.isdigit(), int(g) if g.isdigit() else 0, g))


def bulk_changes(status: np.ndarray, rows: np.ndarray, decision: str | None) -> int:
    """How many of `rows` a bulk decision would change, from the decision labels (no id work: a count over
    1,000,000 rows in milliseconds, shown before the curator applies it)."""
    picked = status[rows]
    if decision is None:
        return int(np.isin(picked, list(HAND_LABELS.values())).sum())
    return int((picked != HAND_LABELS[decision]).sum())


DUPLICATES_FILTER = "with a duplicate"


def duplicate_rows(rows: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """The rows with a duplicate, group by group (groups in the order their first member comes in `rows`, and
    each group's members in that order): a curator sees each group together."""
    rows = rows[groups[rows] >= 0]
    g = groups[rows]
    _, first = np.unique(g, return_index=True)
    rank = np.empty(g.max() + 1 if len(g) else 0, np.int64)
    rank[g[np.sort(first)]] = np.arange(len(first))
    return rows[np.argsort(rank[g], kind="stable")]
