"""The disk a run needs, planned beside its memory and checked before it starts (a 1B-shaped run in four module
groups once filled 66 GB at its last step): the factors (in module groups, each group's file and then the joined
one), the fit's float64 checkpoints while a group fits, and the results (the chunks, then the final files)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from gdig.config import ScoreConfig
from gdig.engine.memory import module_groups
from gdig.hessians import hessian
from gdig.hessians.base import EIGENVALUE_PASS, Hessian
from gdig.rundir.layout import folder_bytes

INDEX_BYTES = {"int8": 1, "float16": 2, "float32": 4}  # per coordinate of an index row (--index-dtype)


@dataclass(frozen=True)
class DiskPlan:
    """Bytes a run writes at its fullest, by what they hold."""

    factors: float  # float32 factors: the groups' files and the joined one (in module groups), else one file
    checkpoints: float  # the fit's float64 sums, on disk while a group fits (each process's own)
    seeds: float  # the preconditioned seeds (each group's), their mean direction and index rows
    results: float  # the scores, sketches and index rows: as chunks, then as the final files; in module groups
    # also each group's running sums but the last's (float32 index rows)

    @property
    def total(self) -> float:
        """All of it (a slight over-estimate: the checkpoints go before the last factors are joined)."""
        return self.factors + self.checkpoints + self.seeds + self.results

    def describe(self) -> str:
        """The total and its parts, in GiB: "about X GiB (factors ..., ...)"."""
        gib = 2**30
        return (
            f"about {self.total / gib:.2f} GiB (factors {self.factors / gib:.2f}, the fit's float64 checkpoints "
            f"{self.checkpoints / gib:.2f}, seeds {self.seeds / gib:.2f}, results {self.results / gib:.2f})"
        )


def plan_disk(
    cfg: ScoreConfig,
    dims: dict[str, tuple[int, int]],
    n_candidates: int,
    n_columns: int,
    parts: int,
    processes: int,
    seed_bytes: float = 0.0,
) -> DiskPlan:
    """The disk of a run over modules `dims` (d_in, d_out) in `parts` module groups, with `processes` processes
    (each keeps checkpoints of its own sums: of its share of the data, or with --shard-factors of its groups);
    `seed_bytes`: the preconditioned seeds at the rank they are kept at."""
    h = hessian(cfg.hessian)
    sizes = list(dims.values())
    factors = 4 * sum(h.factor_numbers(d_in, d_out) for d_in, d_out in sizes)
    sums = [8 * _fit_sums(h, d_in, d_out) for d_in, d_out in sizes]
    per_group = sorted((sum(sums[i] for i in g) for g in module_groups(sizes, parts)), reverse=True)
    fitting_at_once = min(processes, len(per_group)) if cfg.shard_factors else 1
    checkpoints = sum(per_group[:fitting_at_once]) * (1 if cfg.shard_factors else processes)
    row = 4 * (n_columns + cfg.sketch_dim + 4) + INDEX_BYTES.get(cfg.index_dtype, 4) * cfg.index_dim
    carried = (parts - 1) * 4 * (n_columns + cfg.sketch_dim + cfg.index_dim + 2)
    seeds = seed_bytes + 4 * sum(d_in * d_out for d_in, d_out in sizes) + 4 * n_columns * cfg.index_dim
    return DiskPlan(factors * (2 if parts > 1 else 1), checkpoints, seeds, (2 * row + carried) * n_candidates)


def _fit_sums(h: Hessian, d_in: int, d_out: int) -> int:
    """Numbers in a module's fit checkpoint: the covariance sums (kept whole once their pass is done) and the
    eigenvalue sums."""
    if not h.fitted:
        return 0
    covariance = d_in * d_in + d_out * d_out if h.eigendecomposes else 0
    return covariance + (d_in * d_out if EIGENVALUE_PASS in h.passes else 0)


def free_disk_bytes(out: str | Path) -> float:
    """Free bytes on the disk that holds `out` (its nearest existing folder)."""
    path = Path(out).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return float(shutil.disk_usage(path).free)


def disk_shortfall(disk: DiskPlan, out: str | Path) -> str | None:
    """Why a run into `out` would fill its disk (what it writes, less what `out` already holds, against what is
    free), or None when it has the room."""
    free = free_disk_bytes(out)
    if disk.total - folder_bytes(out) <= free:
        return None
    return (
        f"this run writes {disk.describe()} but {free / 2**30:.2f} GiB is free on the disk of {out}; nothing was "
        "computed. Free some space or write the run elsewhere (--out)"
    )
