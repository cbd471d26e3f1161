"""The curator's decision layer: the G-DIG quality rule, K-means over gradient sketches, resampling to a budget,
and baseline selectors on the same interface. Pure functions of the stored matrices: fast enough to re-run on
every slider move.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from gdig.options import option
from gdig.selection.clusters import GradientClusterer, best_first, resample
from gdig.selection.decisions import id_index, positions
from gdig.selection.duplicates import LEVELS, Duplicates, one_per_group
from gdig.selection.signals import check_fraction, lowest_rank, mean_rank, rank_matrix, rule_scores, signal_filters

STRATEGIES = ("uniform", "proportional")
WITHIN = ("quality", "random")
METHODS = ("gdig", "random", "loss", "mean-influence", "length-ratio")


RULES = ("mean", "fraction")
COMBINATIONS = ("weakest", "influence", "rank-average")
DEDUPE = ("off", *LEVELS)


@dataclass
class SelectionConfig:
    """Settings of one selection; saved beside every export. The single source of the selection defaults."""

    method: str = option("gdig", "gdig, or a baseline for comparison", choices=METHODS)
    # mean by measurement: it keeps a useful share and ranks best (bench/README.md); the paper's tau = 1 rule
    # (fraction) often keeps nothing with many seeds
    rule: str = option(
        "mean",
        "mean: keep candidates whose mean influence over the seeds is at least min_mean "
        "(0: they help the seeds on average); fraction: keep those that help at least tau of the "
        "seeds (tau = 1 is the paper's rule, which with many seeds often keeps nothing)",
        choices=RULES,
        label="Quality rule",
        cli=False,
    )
    tau: float = option(
        1.0,
        "keep candidates helping at least this fraction of seeds (--tau 1 is the paper's rule)",
        minimum=0.0,
        cli=False,
    )
    min_mean: float = option(
        0.0,
        "keep candidates with mean influence >= X (the default rule, with X = 0: "
        "candidates that help the seeds on average)",
        cli=False,
    )
    # weakest by measurement (bench/README.md): corrupted-pair AUROC on three real de->en pools, G-DIG alone 0.93 /
    # 0.90 / 0.92, with the signals by the weakest link 0.95 / 0.94 / 0.95, by rank average 0.92 / 0.94 / 0.88
    combine: str = option(
        "weakest",
        "weakest: G-DIG's quality rule, and no signal beside it (length ratio, language identification, loss) in "
        "its pool's bottom min_weakest; ranked by each candidate's worst percentile rank over G-DIG's score and "
        "the signals. influence: G-DIG's rule and score alone (the paper). rank-average: keep candidates whose "
        "mean percentile rank over G-DIG's score and the signals is at least min_combined",
        choices=COMBINATIONS,
        label="Combine with signals",
    )
    min_weakest: float = option(
        0.1,
        "with weakest: drop a pair in the bottom share of any signal (0.1: its worst tenth; 0: none)",
        minimum=0.0,
        label="Drop the bottom share of each signal",
    )
    min_combined: float = option(
        0.5, "with rank-average: the lowest mean percentile rank kept (0..1)", minimum=0.0, label="Min combined rank"
    )
    # off by measurement: joined to the default rule they moved its AUROC by +0.000 / -0.009 (bench/README.md)
    adequacy: bool = option(False, "the adequacy signals (gdig score --adequacy) join the rule", label="Use adequacy")
    max_length_deviation: float | None = option(
        None,
        "drop pairs whose length ratio is more than e^X off the pool's typical ratio (1: about 2.7 times; 0 or "
        "none: off)",
        minimum=0.0,
        label="Max length deviation (log)",
    )
    min_language_score: float | None = option(
        None,
        "drop pairs whose two sides are not both surely in their declared languages (0..1; 0 or none: off)",
        minimum=0.0,
        label="Min language confidence",
    )
    clusters: int = option(10, "K for K-means over gradient sketches", label="K (clusters)", minimum=1)
    budget: int | None = option(
        None,
        "how many to select (none or 0: every kept candidate)",
        label="Budget (0 = every kept candidate)",
        minimum=0,
    )
    strategy: str = option(
        "uniform", "uniform: about budget/K from each cluster; proportional: by cluster size", choices=STRATEGIES
    )
    within: str = option(
        "quality", "order inside a cluster: best quality first, or random", choices=WITHIN, label="Within a cluster"
    )
    seed: int = option(0, "seed of the clustering and random choices", label="Random seed")
    dedupe: str = option(
        "off",
        "keep one pair per duplicate group, the best by the rule's order: exact (same texts after case, Unicode "
        "and whitespace) or near (also the same once punctuation and spacing are dropped); off: keep every pair",
        choices=DEDUPE,
        label="Keep one per duplicate group",
    )
    include: list[str] = option(
        help="ids kept whatever the rule (the run's overrides)", cli=False, default_factory=list
    )
    exclude: list[str] = option(
        help="ids dropped whatever the rule (the run's overrides)", cli=False, default_factory=list
    )

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("method", self.method, METHODS),
            ("rule", self.rule, RULES),
            ("strategy", self.strategy, STRATEGIES),
            ("within", self.within, WITHIN),
            ("dedupe", self.dedupe, DEDUPE),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        if not (math.isfinite(self.tau) and 0 <= self.tau <= 1):
            raise ValueError(f"tau must be a number between 0 and 1, got {self.tau}")
        if not math.isfinite(self.min_mean):
            raise ValueError(f"the mean-influence threshold must be a finite number, got {self.min_mean}")
        if self.combine not in COMBINATIONS:
            raise ValueError(f"combine must be one of {', '.join(COMBINATIONS)}, got {self.combine!r}")
        check_fraction("min_combined", self.min_combined)
        check_fraction("min_weakest", self.min_weakest)
        check_fraction("the language threshold", self.min_language_score)
        if self.max_length_deviation is not None and not self.max_length_deviation >= 0:
            raise ValueError(f"the length deviation must be >= 0, got {self.max_length_deviation}")
        if self.clusters < 1:
            raise ValueError(f"clusters must be >= 1, got {self.clusters}")
        if self.budget is not None and self.budget < 0:
            raise ValueError(f"budget must be >= 0 (0 or none: every kept candidate), got {self.budget}")
        self.budget = self.budget or None
        self.max_length_deviation = self.max_length_deviation or None  # 0 would keep only the median ratio
        self.min_language_score = self.min_language_score or None

    @property
    def thresholds(self) -> tuple[float | None, float | None]:
        """(tau, min_mean) for `quality_mask`: the one the rule uses, None for the other."""
        return (self.tau, None) if self.rule == "fraction" else (None, self.min_mean)

    def to_dict(self) -> dict:
        """The settings as JSON-able values, saved in every manifest."""
        return asdict(self)


@dataclass
class Selection:
    """One selection: the chosen rows in order, and for every candidate its rule decision, cluster and quality."""

    indices: np.ndarray  # selected rows, in selection order
    kept: np.ndarray  # (N,) bool: passed the quality rule (after overrides)
    labels: np.ndarray  # (N,) int cluster of each kept row, -1 elsewhere
    quality: np.ndarray  # (N,) the ordering score used (higher is better)
    messages: list[str] = field(default_factory=list)
    dropped_duplicates: int = 0  # rows the rule kept but "keep one per duplicate group" dropped

    def cluster_counts(self) -> dict[int, int]:
        """How many selected rows each cluster gave."""
        lab = self.labels[self.indices]
        return {int(k): int(v) for k, v in zip(*np.unique(lab, return_counts=True), strict=True)}


# -- quality rule ----------------------------------------------------------------------------------------------


def quality_mask(
    frac_helped: np.ndarray,
    mean_influence: np.ndarray,
    tau: float | None,
    min_mean: float | None,
    ids: list[str] | dict[str, int] | None = None,
    include=(),
    exclude=(),
    allowed: np.ndarray | None = None,
) -> np.ndarray:
    """G-DIG's rule: frac_helped >= tau (or mean >= min_mean), within `allowed`; manual overrides always win."""
    if min_mean is not None:
        keep = mean_influence >= min_mean
    elif tau is not None:
        keep = frac_helped >= tau - 1e-9  # frac is k/M in float32: tau = k/M must keep it
    else:
        keep = np.ones(len(frac_helped), bool)
    if allowed is not None:
        keep = keep & allowed
    if include or exclude:
        pos = id_index(ids)
        unknown = [i for i in [*include, *exclude] if i not in pos]
        if unknown:
            raise ValueError(f"override ids not in the run: {', '.join(map(str, unknown[:5]))}")
        keep = keep.copy()
        keep[[pos[i] for i in include]] = True
        keep[[pos[i] for i in exclude]] = False
    return keep


# -- selectors -------------------------------------------------------------------------------------------------


def select(
    frac_helped,
    mean_influence,
    sketch,
    ids,
    cfg: SelectionConfig,
    loss=None,
    length_score=None,
    labels: np.ndarray | None = None,
    signals: dict[str, np.ndarray] | None = None,
    quality: np.ndarray | None = None,
    duplicates: Duplicates | None = None,
    ranks: np.ndarray | None = None,
    decisions: tuple | None = None,
) -> Selection:
    """One selection. `labels` (cluster of each kept row) may be passed to skip re-clustering; `signals` are the
    higher-is-better scores beside influence (gdig.selection.signals.signal_scores) for the combined rule and filters;
    `quality` is quality_score's result when the caller keeps it (two sorts of every row saved); `duplicates`
    the candidates' duplicate groups, needed when cfg.dedupe is on; `decisions` rule_decisions' result when
    the caller has it for these settings."""
    n, msgs, dropped = len(frac_helped), [], 0
    if cfg.method == "gdig":
        kept, quality, dropped = decisions or rule_decisions(
            frac_helped, mean_influence, ids, cfg, signals, quality, duplicates, ranks
        )
    else:
        kept = quality_mask(frac_helped, mean_influence, None, None, ids, cfg.include, cfg.exclude)
        quality = _baseline_score(cfg.method, n, cfg.seed, mean_influence, loss, length_score)
    rows = np.flatnonzero(kept)
    budget = len(rows) if cfg.budget is None else cfg.budget
    if budget > len(rows):
        msgs.append(f"budget {budget} is more than the {len(rows)} candidates kept; returning all {len(rows)}")
        budget = len(rows)
    forced = positions(ids, dict.fromkeys(cfg.include))  # included by hand: taken first
    if len(forced) > budget:
        msgs.append(f"{len(forced)} candidates are included by hand, more than the budget {budget}; all are kept")
    free = rows[~np.isin(rows, forced)] if len(forced) else rows  # np.setdiff1d hashes: 0.4 s at 1,000,000
    n_free = max(budget - len(forced), 0)
    full_labels = np.full(n, -1, np.int64)
    if cfg.method == "gdig" and len(rows):
        if labels is None:
            labels = GradientClusterer(cfg.clusters, cfg.seed).fit_predict(sketch[rows])
        full_labels[rows] = labels
        chosen = resample(full_labels[free], free, quality, n_free, cfg.strategy, cfg.within, cfg.seed)
    else:
        chosen = best_first(free, quality, n_free)
    chosen = np.concatenate([forced, chosen])
    return Selection(chosen.astype(np.int64), kept, full_labels, quality.astype(np.float32), msgs, dropped)


def apply_rule(frac_helped, mean_influence, ids, cfg: SelectionConfig, signals: dict | None = None, quality=None):
    """(kept, quality): the quality rule in force, on G-DIG's score alone or together with the signals beside it
    (weakest link or rank average), within the signals' thresholds, overrides applied; and the order it ranks
    by. `quality`: quality_score(frac_helped, mean_influence) when the caller has it."""
    return rule_decisions(frac_helped, mean_influence, ids, cfg, signals, quality)[:2]


def rule_decisions(frac_helped, mean_influence, ids, cfg, signals=None, quality=None, duplicates=None, ranks=None):
    """apply_rule's (kept, quality), with one pair per duplicate group when cfg.dedupe asks (the best of each
    group by the rule's order), and how many kept pairs that dropped. `ranks`: the run's rank matrix of the
    rule's scores when the caller keeps it (RunResults.rule_ranks: a second saved per call at 1,000,000)."""
    from gdig.selection.signals import rule_signals

    signals = rule_signals(signals or {}, cfg.adequacy)
    quality = quality_score(frac_helped, mean_influence) if quality is None else quality
    allowed = signal_filters(cfg, signals, len(quality))
    thresholds = cfg.thresholds
    if cfg.combine == "influence":
        combined = quality
    else:
        if ranks is None:  # row 0 G-DIG's statistic as the rule reads it, then the signals'
            ranks = rank_matrix(rule_scores(cfg.rule, mean_influence, quality, signals))
        if cfg.combine == "weakest":  # G-DIG's rule, no signal in its bottom min_weakest, ranked by the worst
            combined = lowest_rank(ranks) + TIE_BREAK * mean_rank(ranks)
            if signals:
                floor = lowest_rank(ranks[1:])
                allowed &= np.isnan(floor) | (floor >= cfg.min_weakest)
        else:  # rank-average: the mean rank decides alone
            combined = mean_rank(ranks) + TIE_BREAK * rank01(quality)
            allowed &= combined >= cfg.min_combined
            thresholds = (None, None)
    dropped = 0
    if cfg.dedupe != "off":
        if duplicates is None:
            raise ValueError("keeping one pair per duplicate group needs the candidates' duplicate groups")
        ruled = quality_mask(frac_helped, mean_influence, *thresholds, ids, (), cfg.exclude, allowed)  # by hand first
        best = one_per_group(ruled, duplicates.groups(cfg.dedupe), combined)
        dropped, allowed = int((ruled & ~best).sum()), allowed & best
    kept = quality_mask(frac_helped, mean_influence, *thresholds, ids, cfg.include, cfg.exclude, allowed)
    return kept, combined, dropped


TIE_BREAK = 1e-6  # below the gap 1/M between two fractions of M seeds, for any M < 1,000,000


def quality_score(frac_helped: np.ndarray, mean_influence: np.ndarray) -> np.ndarray:
    """The fraction of seeds helped, ties broken by mean influence (never a lower fraction above a higher)."""
    return frac_helped.astype(np.float64) + TIE_BREAK * rank01(mean_influence)


def rank01(x: np.ndarray) -> np.ndarray:
    """Ranks scaled to [0, 1] (stable ties): a tie-breaker that never outweighs the score it is added to."""
    r = np.argsort(np.argsort(x, kind="stable"), kind="stable")
    return r / max(len(x) - 1, 1)


def _baseline_score(method, n, seed, mean_influence, loss, length_score) -> np.ndarray:
    if method == "random":
        return np.random.default_rng(seed).random(n)
    if method == "loss":
        if loss is None:
            raise ValueError("the loss baseline needs candidate losses")
        return -np.asarray(loss, np.float64)
    if method == "mean-influence":
        return np.asarray(mean_influence, np.float64)
    if length_score is None:
        raise ValueError("the length-ratio baseline needs source and target texts")
    return np.asarray(length_score, np.float64)


def select_run(run, cfg: SelectionConfig, labels: np.ndarray | None = None, decisions=None) -> Selection:
    """`select` on a loaded run (gdig.results.RunResults), with its losses and length ratios for baselines."""
    signals = run.signals
    clustering = cfg.method == "gdig" and labels is None
    return select(
        run.frac_helped,
        run.mean_influence,
        run.cluster_features if clustering else run.sketch,  # the reduced space is made only when clustered
        run.id_index,
        cfg,
        loss=run.candidates["loss"].to_numpy(),
        length_score=signals["length"],
        labels=labels,
        signals=signals,
        quality=run.quality,
        duplicates=run.duplicates if cfg.dedupe != "off" else None,
        ranks=None if cfg.combine == "influence" or decisions else run.rule_ranks(cfg.rule, cfg.adequacy),
        decisions=decisions,
    )
