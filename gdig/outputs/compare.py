"""Two or three selections of one run side by side: each a saved export or a rule applied live at one budget;
their overlap, counts per cluster of one clustering of the whole pool (so that the clusters are the same for
every selection), counts per labelled kind, the distribution of influence and of each signal, and the pairs in
one selection and in no other. Used by `gdig compare`, the Compare page and the closed loop
(gdig.pipeline.evaluation)."""

from __future__ import annotations

import dataclasses
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from gdig.rundir.layout import SELECTIONS
from gdig.rundir.results import RunResults
from gdig.selection.select import SelectionConfig, select_run

RULES = {
    "current": "the run's current rule (the app's settings and hand decisions)",
    "default": "the default rule (mean influence with the signals, weakest link)",
    "paper": "the paper's rule (helps every seed: tau = 1, influence alone)",
    "length-ratio": "the pairs with the most typical length ratio",
    "random": "a random draw",
}
BASELINES = ("length-ratio", "random")  # they need a budget: they rank the whole pool
KIND_COLUMN = "corruption"  # the demo's and the benchmarks' label of a pool pair (empty: clean)


@dataclass
class NamedSelection:
    """One side of a comparison: the selected rows (sorted) and where they came from."""

    name: str
    rows: np.ndarray
    source: str


def rule_config(
    rule: str, budget: int | None, current: SelectionConfig | None = None, seed: int = 0
) -> SelectionConfig:
    """The settings of a rule applied live at `budget` (None: every candidate the rule keeps; the current rule
    then keeps its own budget and seed), drawn with `seed` (random, K-means)."""
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; expected one of {', '.join(RULES)}")
    base = {
        "current": current or SelectionConfig(),
        "default": SelectionConfig(),
        "paper": SelectionConfig(rule="fraction", tau=1.0, combine="influence"),
        "length-ratio": SelectionConfig(method="length-ratio"),
        "random": SelectionConfig(method="random"),
    }[rule]
    if rule == "current":
        return dataclasses.replace(base, budget=budget or base.budget)
    return dataclasses.replace(base, budget=budget, seed=seed)


def rule_selection(run: RunResults, rule: str, budget: int | None, current=None, seed: int = 0) -> NamedSelection:
    """A rule applied to the run now ("current": `current`, else the run's saved settings)."""
    if rule in BASELINES and not budget:
        raise ValueError(f"the {rule} selection needs a budget (--budget, or a non-empty selection listed before it)")
    if rule == "current" and current is None:
        current = current_config(run.path)
    cfg = rule_config(rule, budget, current, seed)
    sel = select_run(run, cfg)
    shown = f"{cfg.budget:,}" if cfg.budget else "every kept candidate"
    return NamedSelection(rule, np.sort(sel.indices), f"{RULES[rule]}, budget {shown}")


def read_export(run: RunResults, path: str | Path) -> NamedSelection:
    """The rows of a JSONL export of this run, found by the `gdig` id of each line or else by its exact record;
    an export made from another run (its manifest says so) or holding a pair that is not in this pool is refused."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no selection file {path}")
    manifest = path.with_suffix(".json")
    if manifest.is_file():
        made_from = json.loads(manifest.read_text()).get("run_fingerprints")
        if made_from is not None and made_from != run.fingerprint:
            raise ValueError(
                f"{path} was exported from another run (its manifest's fingerprints differ from "
                f"{run.path.name}'s): compare selections of one run"
            )
    by_record = None
    records = run.candidates["record"].tolist()
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} line {number}: not JSON ({e.msg})") from None
        meta = rec.pop("gdig", None) if isinstance(rec, dict) else None
        row = run.id_index.get(str(meta.get("id"))) if isinstance(meta, dict) else None
        if row is not None and _canonical(json.loads(records[row])) == _canonical(rec):
            rows.append(row)  # its id, and the same pair: ids alone are row numbers in pools without their own
            continue
        by_record = (
            by_record if by_record is not None else {_canonical(json.loads(r)): i for i, r in enumerate(records)}
        )
        row = by_record.get(_canonical(rec))
        if row is None:
            raise ValueError(
                f"{path} line {number}: not a pair of {run.path.name}'s pool (a selection of another "
                "run or pool?); compare selections of one run"
            )
        rows.append(row)
    if not rows:
        raise ValueError(f"{path} is an empty selection")
    return NamedSelection(path.stem, np.unique(np.asarray(rows, np.int64)), f"export {path.name}")


def _canonical(record) -> str:
    return json.dumps(record, ensure_ascii=False, sort_keys=True)


def saved_exports(run: RunResults) -> list[Path]:
    """The selections saved into the run (the Export page's Save), by name."""
    return sorted((run.path / SELECTIONS).glob("*.jsonl"))


def resolve(
    run: RunResults, specs: list[str], budget: int | None = None, current=None, seed: int = 0
) -> list[NamedSelection]:
    """Each spec as a selection: a rule's name (RULES: a rule's name wins over a saved selection of that name;
    give such a one by its path), a selection saved in the run, or a JSONL file. Rules without a budget of their
    own (the baselines) take --budget or the size of the first selection before them."""
    if not 2 <= len(specs) <= 3:
        raise ValueError(f"compare two or three selections, not {len(specs)}")
    out: list[NamedSelection] = []
    for spec in specs:
        if spec in RULES:
            size = budget or (len(out[0].rows) if out else None)
            out.append(rule_selection(run, spec, size if spec in BASELINES else budget, current, seed))
        else:
            saved = run.path / SELECTIONS / f"{spec}.jsonl"
            out.append(read_export(run, saved if saved.is_file() else spec))
    names = [s.name for s in out]
    for i, s in enumerate(out):
        if names.count(s.name) > 1:
            s.name = f"{s.name} ({i + 1})"
    return out


@dataclass
class Comparison:
    """What the page and the CLI show: sizes, overlap regions, per-cluster and per-kind counts, distributions."""

    names: list[str]
    sizes: dict[str, int]
    regions: dict[str, int]  # "only A", "A & B", ... "A & B & C": rows in exactly those selections
    per_cluster: pd.DataFrame  # index cluster, a column per selection (and "pool")
    per_kind: pd.DataFrame | None  # index kind ("clean" or a corruption), a column per selection and "pool"
    distributions: pd.DataFrame  # rows (score, selection): mean and quartiles
    member: np.ndarray  # (N, S) bool
    labels: np.ndarray  # (N,) the pool's cluster of each row (pool_clusters)

    def only(self, name: str) -> np.ndarray:
        """Rows in this selection and in no other."""
        j = self.names.index(name)
        return np.flatnonzero(self.member[:, j] & (self.member.sum(axis=1) == 1))

    def to_dict(self) -> dict:
        """JSON-ready (for --json and the evaluation's report)."""
        return {
            "names": self.names,
            "sizes": self.sizes,
            "regions": self.regions,
            "per_cluster": {str(k): v for k, v in self.per_cluster.to_dict(orient="index").items()},
            "per_kind": None if self.per_kind is None else self.per_kind.to_dict(orient="index"),
            "distributions": [
                {k: None if isinstance(v, float) and not np.isfinite(v) else v for k, v in row.items()}
                for row in self.distributions.reset_index().to_dict(orient="records")
            ],
        }


def pool_clusters(run: RunResults, k: int, seed: int = 0) -> np.ndarray:
    """One K-means clustering of the whole pool's gradients, shared by every selection compared."""
    from gdig.selection.clusters import GradientClusterer

    return GradientClusterer(min(k, run.n), seed).fit_predict(run.cluster_features)


def compare(run: RunResults, sels: list[NamedSelection], clusters: int = 10, seed: int = 0) -> Comparison:
    """The comparison of selections of one run (gdig.outputs.compare.resolve)."""
    names = [s.name for s in sels]
    member = np.zeros((run.n, len(sels)), bool)
    for j, s in enumerate(sels):
        member[s.rows, j] = True
    labels = pool_clusters(run, clusters, seed)
    return Comparison(
        names=names,
        sizes={s.name: len(s.rows) for s in sels},
        regions=_regions(member, names),
        per_cluster=_counts(labels, member, names),
        per_kind=_kinds(run, member, names),
        distributions=_distributions(run, member, names),
        member=member,
        labels=labels,
    )


def _regions(member: np.ndarray, names: list[str]) -> dict[str, int]:
    out = {}
    for r in range(1, len(names) + 1):
        for combo in itertools.combinations(range(len(names)), r):
            pattern = np.zeros(len(names), bool)
            pattern[list(combo)] = True
            label = f"only {names[combo[0]]}" if r == 1 else " & ".join(names[j] for j in combo)
            out[label] = int((member == pattern).all(axis=1).sum())
    return out


def _counts(labels: np.ndarray, member: np.ndarray, names: list[str]) -> pd.DataFrame:
    table = pd.DataFrame({"pool": pd.Series(labels).value_counts()})
    for j, n in enumerate(names):
        table[n] = pd.Series(labels[member[:, j]]).value_counts()
    return table.fillna(0).astype(int).sort_index().rename_axis("cluster")


def _kinds(run: RunResults, member: np.ndarray, names: list[str]) -> pd.DataFrame | None:
    if KIND_COLUMN not in run.candidates:
        return None
    kinds = kind_labels(run.candidates[KIND_COLUMN])
    return _counts(kinds, member, names).rename_axis("kind")


def kind_labels(column: pd.Series) -> np.ndarray:
    """Each pair's labelled kind: its corruption, or "clean" where it has none."""
    return column.fillna("clean").astype(str).replace("", "clean").to_numpy()


def score_columns(run: RunResults) -> dict[str, np.ndarray]:
    """The scores whose distributions are compared: influence's two statistics and the signals (higher better)."""
    return {"mean influence": run.mean_influence, "fraction helped": run.frac_helped} | run.signals


def _distributions(run: RunResults, member: np.ndarray, names: list[str]) -> pd.DataFrame:
    scores = score_columns(run)
    rows = []
    for score, values in scores.items():
        for j, n in enumerate(names):
            v = np.asarray(values, np.float64)[member[:, j]]
            v = v[np.isfinite(v)]
            q = np.percentile(v, [25, 50, 75]) if len(v) else [np.nan] * 3
            rows.append(
                {
                    "score": score,
                    "selection": n,
                    "mean": v.mean() if len(v) else np.nan,
                    "q25": q[0],
                    "median": q[1],
                    "q75": q[2],
                }
            )
    return pd.DataFrame(rows).set_index(["score", "selection"])


def rows_table(run: RunResults, rows: np.ndarray, labels: np.ndarray | None = None) -> pd.DataFrame:
    """The pairs of `rows` with their text and scores, best mean influence first (the page sorts further)."""
    df = run.candidates.iloc[rows]
    source = df["src_text"] if "src_text" in df else df["prompt"]  # a translation pair's source, else the prompt
    table = pd.DataFrame(
        {
            "id": df["id"].astype(str).to_numpy(),
            "source": source.astype(str).to_numpy(),
            "target": df["target"].to_numpy(),
            "mean influence": run.mean_influence[rows],
            "fraction helped": run.frac_helped[rows],
        }
    )
    if labels is not None:
        table["cluster"] = labels[rows]
    if KIND_COLUMN in df:
        table["kind"] = kind_labels(df[KIND_COLUMN])
    return table.sort_values("mean influence", ascending=False, kind="stable").reset_index(drop=True)


def current_config(run_dir: str | Path) -> SelectionConfig:
    """The run's current rule: the selection settings last used in the app (curation.json) and the hand
    decisions (overrides.json), as the Export page would apply them."""
    from gdig.options import specs
    from gdig.rundir.curation import load_curation, load_overrides

    known = specs(SelectionConfig)
    saved = {
        k: v
        for k, v in load_curation(run_dir).items()
        if k in known and k not in ("include", "exclude") and v is not None
    }
    ov = load_overrides(run_dir)
    try:
        return SelectionConfig(**saved, include=ov.include, exclude=ov.exclude)
    except (TypeError, ValueError):  # settings saved by another version: the rule's defaults and the decisions
        return SelectionConfig(include=ov.include, exclude=ov.exclude)


def compare_selections(run: RunResults, specs: list[str], budget: int | None = None, clusters: int = 10, seed: int = 0):
    """resolve + compare in one call (the Python API): `compare_selections(run, ["default", "random"], 5000)`."""
    return compare(run, resolve(run, specs, budget), clusters, seed)
