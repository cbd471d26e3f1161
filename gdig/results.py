"""Read a finished run directory (DESIGN section 3) for selection, export and the app, with clear errors."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gdig.config import write_json_atomic

REQUIRED = ("config.json", "candidates.parquet", "seeds.parquet", "influence.npy", "sketch.npy")
OVERRIDES = "overrides.json"
CURATION = "curation.json"  # the curator's rule and selection settings from the app, kept across reloads


class RunError(ValueError):
    """A run directory that cannot be used, and why."""


@dataclass
class RunResults:
    path: Path
    config: dict[str, Any]
    candidates: pd.DataFrame
    seeds: pd.DataFrame
    influence: np.ndarray  # (N, M) float32
    sketch: np.ndarray  # (N, d)
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def n(self) -> int:
        return self.influence.shape[0]

    @cached_property
    def ids(self) -> list[str]:
        return self.candidates["id"].astype(str).tolist()

    @cached_property
    def frac_helped(self) -> np.ndarray:
        """Fraction of seed columns with I(z, s) > 0, per candidate: the G-DIG quality statistic."""
        return (self.influence > 0).mean(axis=1, dtype=np.float64).astype(np.float32)

    @cached_property
    def mean_influence(self) -> np.ndarray:
        return self.influence.mean(axis=1, dtype=np.float64).astype(np.float32)

    @property
    def fingerprint(self) -> dict[str, str]:
        return self.config.get("fingerprints", {})

    def umap(self) -> np.ndarray | None:
        p = self.path / "umap.npy"
        return np.load(p) if p.exists() else None


def load_run(path: str | Path) -> RunResults:
    run = Path(path)
    if not run.is_dir():
        raise RunError(f"{run}: no such run folder")
    missing = [f for f in REQUIRED if not (run / f).exists()]
    if missing:
        status = _status_line(run)
        raise RunError(f"{run}: missing {', '.join(missing)}; the run has not finished ({status})")
    try:
        config = json.loads((run / "config.json").read_text())
        influence = np.load(run / "influence.npy", allow_pickle=False)
        sketch = np.load(run / "sketch.npy", allow_pickle=False)
        candidates = pd.read_parquet(run / "candidates.parquet")
        seeds = pd.read_parquet(run / "seeds.parquet")
    except (ValueError, OSError, json.JSONDecodeError) as e:
        raise RunError(f"{run}: a run file is unreadable ({e})") from None
    if influence.ndim != 2 or influence.shape[0] != len(candidates) or sketch.shape[0] != len(candidates):
        raise RunError(f"{run}: influence {influence.shape}, sketch {sketch.shape} and {len(candidates)} candidates "
                       "do not agree")  # fmt: skip
    return RunResults(run, config, candidates, seeds, influence, sketch)


def _status_line(run: Path) -> str:
    try:
        s = json.loads((run / "status.json").read_text())
    except (OSError, json.JSONDecodeError):
        return "no status"
    line = f"stage {s.get('stage')}, {s.get('done')}/{s.get('total')}"
    return line + (f", error: {s['error']}" if s.get("error") else "")


# -- manual overrides, saved beside the run --------------------------------------------------------------------


@dataclass
class Overrides:
    """Ids the curator forced in or out; they win over every rule."""

    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)

    def set(self, id_: str, decision: str | None) -> None:
        """decision: 'include', 'exclude' or None (back to the rule)."""
        self.include = [i for i in self.include if i != id_]
        self.exclude = [i for i in self.exclude if i != id_]
        if decision == "include":
            self.include.append(id_)
        elif decision == "exclude":
            self.exclude.append(id_)
        elif decision is not None:
            raise ValueError(f"decision must be include, exclude or None, got {decision!r}")


def load_overrides(run: str | Path) -> Overrides:
    p = Path(run) / OVERRIDES
    if not p.exists():
        return Overrides()
    d = json.loads(p.read_text())
    return Overrides([str(i) for i in d.get("include", [])], [str(i) for i in d.get("exclude", [])])


def save_overrides(run: str | Path, overrides: Overrides) -> None:
    write_json_atomic(Path(run) / OVERRIDES, {"include": overrides.include, "exclude": overrides.exclude})


def load_curation(run: str | Path) -> dict:
    """The selection settings last used on this run in the app (rule, thresholds, K, budget...), or {}."""
    try:
        d = json.loads((Path(run) / CURATION).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return d if isinstance(d, dict) else {}


def save_curation(run: str | Path, settings: dict) -> None:
    write_json_atomic(Path(run) / CURATION, settings)
