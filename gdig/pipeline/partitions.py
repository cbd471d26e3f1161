"""--module-partitions P: the tracked modules processed in P groups, one pass over the data each (fit, seeds,
scores), so that the peak memory is the largest group's factors, float64 sums, seeds and captures rather than
every module's (kronfluence's module partitions). Exact: every sum over modules (the scores, the
self-influences, the index rows) continues the last group's in module order and the sketch's columns are
concatenated in module order, so the results equal one pass's bit for bit; the groups' factors are joined
into the run's one factors file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gdig.engine.curvature import Curvature
from gdig.engine.hooks import Captured
from gdig.engine.influence import ScoredBatch, Scorer, needs_self_influence
from gdig.engine.memory import release_freed_memory, tracked_groups
from gdig.engine.seeds import SeedGradients, mean_seed_direction
from gdig.engine.sketch import Sketcher
from gdig.hessians import hessian
from gdig.pipeline.context import ScoreContext, factors_fingerprint, short_hash
from gdig.pipeline.seed_stage import load_or_make_seeds
from gdig.pipeline.sharding import Shards, shards_of
from gdig.pipeline.stages import (
    StageResults,
    dampings_for,
    factors_record,
    fit_factors,
    index_projection,
    reusable_factors,
    score_stage,
)
from gdig.rundir.chunks import part_chunk_path, part_name, partial_dir
from gdig.rundir.factors import join_factors, load_factors
from gdig.rundir.layout import FACTORS, read_fingerprint
from gdig.rundir.seeds import load_seed_gradients, seeds_path
from gdig.rundir.status import Status

GROUP_FACTORS = "factors.safetensors"  # in a group's folder under partial/


def resumed_groups(module_partitions: int, saved: dict | None, least: int) -> int:
    """--module-partitions 0 on a resumed run: the groups its partial/ was made in (when there are enough for its
    processes), so that no finished group is redone whatever the plan would choose now; else as given (a run
    begun in one group has no group's work to keep: the plan chooses again)."""
    kept = int((saved or {}).get("settings", {}).get("module_partitions") or 0)
    return kept if module_partitions == 0 and kept > 1 and kept >= least else module_partitions


def group_label(group: int, parts: int) -> str:
    """What a stage's name carries while the run works on one of several module groups: " [2/3]"."""
    return f" [{group + 1}/{parts}]" if parts > 1 else ""


@dataclass
class Carried:
    """The last group's sums for one chunk of candidates, handed out batch by batch in the chunk's order."""

    tensors: dict[str, torch.Tensor]
    offset: int = 0

    def next(self, index: list[int], device) -> tuple[ScoredBatch, torch.Tensor]:
        """The sums of the batch of candidates `index` (the next in the chunk): scores, self-influence and index
        rows, and the sketch columns."""
        n = len(index)
        rows = slice(self.offset, self.offset + n)
        self.offset += n
        got = {k: v[rows].to(device).clone() for k, v in self.tensors.items()}
        if got["index_of"].tolist() != index:  # the groups' batches must be the same, or the sums would mix rows
            raise RuntimeError("a module group's batches differ from the last group's; delete partial/ and rerun")
        return ScoredBatch(got["scores"], got.get("self_influence"), got.get("index")), got["sketch"]


@dataclass
class PartSums:
    """Group `group` of `parts`: where its running sums per chunk are kept (partial/parts-P/group-G/), read by
    the next group's pass; the last group's pass writes the run's chunks instead."""

    run_dir: Path
    parts: int
    group: int
    shards: Shards | None = None  # --shard-factors: the previous group's sums may still be on their way

    @property
    def last(self) -> bool:
        """Whether this is the last group (its pass normalises and writes the chunks)."""
        return self.group == self.parts - 1

    def done(self, i: int) -> bool:
        """Whether this group's sums for chunk i are already kept (a resumed run)."""
        return not self.last and self._path(self.group, i).exists()

    def carried(self, i: int) -> Carried | None:
        """The previous group's sums for chunk i (None for the first group)."""
        if self.group == 0:
            return None
        from safetensors.torch import load_file

        path = self._path(self.group - 1, i)
        if self.shards is not None:
            self.shards.wait_for(path, self.group - 1)
        return Carried(load_file(str(path)))

    @staticmethod
    def arrays(cap: Captured, scored: ScoredBatch, sketch: torch.Tensor) -> dict[str, torch.Tensor]:
        """One batch's sums so far, in their own dtypes, with the candidates they belong to."""
        out = {"index_of": torch.as_tensor(cap.index, dtype=torch.int64), "scores": scored.scores, "sketch": sketch}
        if scored.self_influence is not None:
            out["self_influence"] = scored.self_influence
        if scored.index is not None:
            out["index"] = scored.index
        return {k: v.detach().cpu() for k, v in out.items()}

    def save(self, i: int, arrays: dict[str, torch.Tensor]) -> None:
        """This group's sums for chunk i, written whole (safetensors: exact in every dtype)."""
        from safetensors.torch import save_file

        from gdig.atomic import atomic_path

        path = self._path(self.group, i)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in arrays.items()}, str(tmp))

    def _path(self, group: int, i: int) -> Path:
        return part_chunk_path(self.run_dir, part_name(self.parts, group), i)


def score_in_parts(ctx: ScoreContext, run_dir: Path, status: Status, fp: str, sketcher: Sketcher) -> StageResults:
    """Fit, seeds and scores, one module group at a time (each group's factors, seeds and captures released
    before the next); the run's factors file joined from the groups' unless it was reused whole."""
    groups = tracked_groups(ctx.tracked, ctx.cfg.module_partitions)
    fitted = bool(hessian(ctx.cfg.hessian).passes)
    reused = fitted and reusable_factors(ctx, run_dir, status)
    shards = shards_of(ctx, run_dir, len(groups), status)
    try:
        result = _each_group(ctx, run_dir, status, fp, sketcher, groups, fitted, reused, shards)
    finally:
        status.group = ""
    if shards is not None:
        shards.wait_for_every_group()
    ctx.world.barrier("waiting for every rank's scores", status.refresh)
    if ctx.world.is_main and shards is not None:
        result = shards.gathered(ctx.device)
    if ctx.world.is_main:
        self_influence = result.seeds.self_influence
        turned_back = not needs_self_influence(ctx.cfg.normalize, ctx.cfg.index_dim > 0)  # as the Scorer did
        normalize = ctx.cfg.normalize
        result.mean = _mean_direction(run_dir, len(groups), self_influence, normalize, ctx.device, reused, turned_back)
        if fitted and not reused:
            parts = [partial_dir(run_dir) / part_name(len(groups), g) / GROUP_FACTORS for g in range(len(groups))]
            join_factors(parts, run_dir / FACTORS, factors_fingerprint(ctx))
    return result


def _each_group(
    ctx: ScoreContext,
    run_dir: Path,
    status: Status,
    fp: str,
    sketcher,
    groups,
    fitted: bool,
    reused: bool,
    shards: Shards | None,
) -> StageResults:
    """Every group's fit, seeds and scores in turn; what the last leaves (its seeds carry every module's sums).
    With --shard-factors, this process's groups only, each in a one-process world (gdig.pipeline.sharding)."""
    result = StageResults(SeedGradients(), np.zeros(0), np.zeros(0), None, {}, {})
    carried, lowrank = None, {}
    for g, group in enumerate(groups):
        if shards is not None and not shards.owns(g):
            continue
        part_ctx, part = ctx.for_part(group), part_name(len(groups), g)
        part_ctx = part_ctx if shards is None else shards.alone(part_ctx)
        status.group = group_label(g, len(groups))
        cur = _group_curvature(part_ctx, run_dir, part, status, fitted, reused, sketcher)
        dampings = dampings_for(part_ctx, cur)
        if shards is not None and g > 0:
            carried = shards.carried_seeds(g, fp)
        projection = index_projection(ctx)  # its kept hashes are this group's modules' only
        seeds, loss, ntok, rank = load_or_make_seeds(part_ctx, cur, dampings, run_dir, status, fp, part, carried)
        scorer = Scorer(seeds, cur, dampings, ctx.cfg.normalize, projection, [t.name for t in group])
        score_stage(part_ctx, scorer, sketcher, run_dir, status, PartSums(run_dir, len(groups), g, shards))
        factors = factors_record(cur)
        if shards is not None:
            shards.save_record(g, dampings, factors)
        lowrank |= seeds.lowrank_error
        carried = SeedGradients(self_influence=seeds.self_influence, index=seeds.index, lowrank_error=lowrank)
        result = StageResults(carried, loss, ntok, rank, result.dampings | dampings, factors)
        del cur, scorer, seeds, projection
        release_freed_memory()
    return result


def _group_curvature(
    ctx: ScoreContext, run_dir: Path, part: str, status: Status, fitted: bool, reused: bool, sketcher
) -> Curvature:
    """The group's factors: read from the run's reused factors file, from the group's own file (a resumed run),
    or fitted into it (with the run's `sketcher`: stages.fit_factors)."""
    if not fitted:
        return Curvature(ctx.cfg.hessian)
    names = [t.name for t in ctx.work]
    if reused:
        return load_factors(run_dir / FACTORS, ctx.device, names)
    folder = partial_dir(run_dir) / part
    path, fp = folder / GROUP_FACTORS, short_hash([factors_fingerprint(ctx), names])
    if read_fingerprint(path) == fp:
        return load_factors(path, ctx.device)
    return fit_factors(ctx, path, fp, folder, status, sketcher)


def _mean_direction(
    run_dir: Path, parts: int, self_influence: torch.Tensor, normalize: str, device, reused: bool, turned_back: bool
) -> dict:
    """The mean seed direction of every module (gdig.engine.seeds.mean_seed_direction), read group by group
    from the groups' seeds with the final self-influence (every module's, which the unit weights need), each
    group's dense seeds rotated back from the eigenbasis of its factors (the run's reused file, or the group's):
    `turned_back`, all of them first, as the scoring pass turned back a whole run's (the same bits)."""
    mean: dict[str, torch.Tensor] = {}
    for g in range(parts):
        part = part_name(parts, g)
        seeds, _ = load_seed_gradients(seeds_path(run_dir, part), device)
        seeds.self_influence = self_influence.to(device)
        basis = None
        if seeds.eigenbasis:
            path = run_dir / FACTORS if reused else partial_dir(run_dir) / part / GROUP_FACTORS
            basis = load_factors(path, device, seeds.names)
            if turned_back:
                seeds.to_weights(basis)
        mean |= mean_seed_direction(seeds, normalize, basis)
        del seeds, basis
    return mean
