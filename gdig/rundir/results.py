"""Read a finished run directory (DESIGN section 3) for selection, export and the app, with clear errors."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gdig.config import ScoreConfig
from gdig.rundir.format import upgrade
from gdig.rundir.layout import CANDIDATES, CONFIG, INFLUENCE, REQUIRED, SEEDS, SKETCH
from gdig.rundir.status import read_status


class RunError(ValueError):
    """A run directory that cannot be used, and why."""


@dataclass
class RunResults:
    """A finished run: its config and tables in memory; the influence matrix and sketches memory-mapped (read
    from disk as they are used, so a 1,000,000 x 256 run opens in seconds and one row or column costs its own bytes)."""

    path: Path
    config: dict[str, Any]
    candidates: pd.DataFrame
    seeds: pd.DataFrame
    influence: np.ndarray  # (N, M) float32, memory-mapped
    sketch: np.ndarray  # (N, d), memory-mapped

    @property
    def n(self) -> int:
        """Number of candidates."""
        return self.influence.shape[0]

    @cached_property
    def settings(self) -> ScoreConfig:
        """The settings the run was scored with, typed (a field the record lacks takes its default). Shared by
        every reader of the run: copy it (dataclasses.replace) before changing it."""
        required = dict.fromkeys(("model", "candidates", "seeds", "out"), "")
        try:
            return ScoreConfig.from_dict(required | self.config.get("settings", {}))
        except (TypeError, ValueError) as e:
            raise RunError(f"{self.path}: its saved settings cannot be read ({e})") from None

    @cached_property
    def ids(self) -> list[str]:
        """Candidate ids as text, in row order (overrides and exports name candidates by id)."""
        return self.candidates["id"].astype(str).tolist()

    @cached_property
    def id_index(self) -> dict[str, int]:
        """Row of each id (overrides name candidates by id), built once per run."""
        return {v: i for i, v in enumerate(self.ids)}

    @cached_property
    def frac_helped(self) -> np.ndarray:
        """Fraction of seed columns with I(z, s) > 0, per candidate: the G-DIG quality statistic."""
        return self._row_statistics[0]

    @cached_property
    def mean_influence(self) -> np.ndarray:
        """Mean influence over seed columns, per candidate: the default quality statistic."""
        return self._row_statistics[1]

    @cached_property
    def signals(self) -> dict[str, np.ndarray]:
        """The signals beside influence, higher is better (gdig.selection.signals.signal_scores), computed once per
        run."""
        from gdig.selection.signals import signal_scores

        return signal_scores(self.candidates)

    def rule_ranks(self, rule: str, adequacy: bool = False) -> np.ndarray:
        """The percentile ranks of the rule's statistic and the signals it reads (gdig.selection.signals.rank_matrix of
        rule_scores), once per run, rule and choice of signals: the combined rules rank 1,000,000 rows in about
        a second."""
        cache = self.__dict__.setdefault("_rule_ranks", {})
        if (rule, adequacy) not in cache:
            from gdig.selection.signals import rank_matrix, rule_scores, rule_signals

            signals = rule_signals(self.signals, adequacy)
            cache[rule, adequacy] = rank_matrix(rule_scores(rule, self.mean_influence, self.quality, signals))
        return cache[rule, adequacy]

    @cached_property
    def duplicates(self):
        """Each candidate's exact and near duplicate groups (gdig.selection.duplicates), found once per run."""
        from gdig.selection.duplicates import find_duplicates, pair_texts

        return find_duplicates(*pair_texts(self.candidates))

    @cached_property
    def quality(self) -> np.ndarray:
        """The order the rule and the selection rank by (gdig.selection.select.quality_score), computed once per run."""
        from gdig.selection.select import quality_score

        return quality_score(self.frac_helped, self.mean_influence)

    @cached_property
    def cluster_features(self) -> np.ndarray:
        """What K-means clusters: the sketches, or for a large run their top principal components
        (gdig.selection.clusters.cluster_space), computed once per run."""
        from gdig.selection.clusters import cluster_space

        return cluster_space(self.sketch)

    @cached_property
    def column_statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """Per seed column: the share of candidates that help it and their mean influence on it."""
        helped, total = np.zeros(self.influence.shape[1]), np.zeros(self.influence.shape[1])
        for rows in _blocks(self.n):
            block = np.asarray(self.influence[rows], np.float64)
            helped += (block > 0).sum(axis=0)
            total += block.sum(axis=0)
        return helped / max(self.n, 1), total / max(self.n, 1)

    @cached_property
    def _row_statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """Both row statistics in one read of the matrix, a block of rows at a time."""
        frac, mean = np.zeros(self.n, np.float32), np.zeros(self.n, np.float32)
        for rows in _blocks(self.n):
            block = self.influence[rows]
            frac[rows] = (block > 0).mean(axis=1, dtype=np.float64)
            mean[rows] = block.mean(axis=1, dtype=np.float64)
        return frac, mean

    @property
    def fingerprint(self) -> dict[str, str]:
        """Fingerprints of the model, data and settings the run was made with (recorded in exports)."""
        return self.config.get("fingerprints", {})


def _blocks(n: int, size: int = 1 << 16):
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def load_run(path: str | Path) -> RunResults:
    """A finished run's files, checked against each other; RunError says what is missing or wrong."""
    run = Path(path)
    if not run.is_dir():
        raise RunError(f"{run}: no such run folder")
    missing = [f for f in REQUIRED if not (run / f).exists()]
    if missing:
        status = _status_line(run)
        raise RunError(f"{run}: missing {', '.join(missing)}; the run has not finished ({status})")
    try:
        config = upgrade(json.loads((run / CONFIG).read_text()))
        influence = np.load(run / INFLUENCE, mmap_mode="r", allow_pickle=False)
        sketch = np.load(run / SKETCH, mmap_mode="r", allow_pickle=False)
        candidates = pd.read_parquet(run / CANDIDATES)
        seeds = pd.read_parquet(run / SEEDS)
    except (ValueError, OSError, json.JSONDecodeError) as e:
        raise RunError(f"{run}: a run file is unreadable ({e})") from None
    if influence.ndim != 2 or influence.shape[0] != len(candidates) or sketch.shape[0] != len(candidates):
        raise RunError(
            f"{run}: influence {influence.shape}, sketch {sketch.shape} and {len(candidates)} candidates do not agree"
        )
    return RunResults(run, config, candidates, seeds, influence, sketch)


def _status_line(run: Path) -> str:
    s = read_status(run)
    if s is None:
        return "no status"
    line = f"stage {s.get('stage')}, {s.get('done')}/{s.get('total')}"
    return line + (f", error: {s['error']}" if s.get("error") else "")
