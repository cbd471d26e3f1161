"""--shard-factors under torchrun: the module groups of gdig.pipeline.partitions spread over the processes, group g
on process g mod N, each group over all the data in a one-process world, so that a process holds only its own
groups' factors and seeds (the factors' memory per process falls with the processes). The sums over modules
still continue in module order: a group waits for the files its predecessor writes anyway (its seeds, then each
chunk's sums), so the results equal one process's bit for bit, while the fits and their eigendecompositions, the
bulk of the work at real sizes, run side by side."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gdig.atomic import write_json_atomic
from gdig.engine.distributed import SINGLE, World, WorldError
from gdig.engine.seeds import SeedGradients
from gdig.pipeline.context import ScoreContext
from gdig.pipeline.stages import StageResults
from gdig.rundir.chunks import part_name, partial_dir
from gdig.rundir.layout import PARTIAL, RANK_STATUS, STATUS, read_fingerprint
from gdig.rundir.seeds import load_seed_meta, load_seed_sums, seeds_meta_path, seeds_path
from gdig.rundir.status import Status

GROUP_RECORD = "group.json"  # in a group's folder under partial/: its dampings and factors record, for rank 0


@dataclass(frozen=True)
class Shards:
    """Which module groups this process owns, and how it waits for another process's group."""

    world: World
    run_dir: Path
    parts: int
    status: Status

    def owns(self, group: int) -> bool:
        """Whether this process fits, seeds and scores module group `group`."""
        return group % self.world.size == self.world.rank

    def alone(self, ctx: ScoreContext) -> ScoreContext:
        """`ctx` in a one-process world: a group's passes go over all the data, as one process's do."""
        return dataclasses.replace(ctx, world=SINGLE)

    def wait_for(self, path: Path, group: int, ready: Callable[[], bool] | None = None) -> None:
        """Block until `path`, a file of module group `group`, exists (and `ready()`, when given). Gives up with a
        WorldError when the process that owns the group has not reported progress within the collective
        timeout; Cancelled on a cancel."""
        owner = group % self.world.size
        beat = self.run_dir / (STATUS if owner == 0 else f"{PARTIAL}/{RANK_STATUS.format(rank=owner)}")
        last, since, pause = None, time.time(), 0.01
        while not (path.exists() and (ready is None or ready())):
            self.status.refresh()
            stamp = beat.stat().st_mtime if beat.exists() else None
            if stamp != last:
                last, since = stamp, time.time()
            elif time.time() - since > self.world.timeout_s:
                raise WorldError(
                    f"rank {self.world.rank} of {self.world.size}: waiting for module group {group + 1}'s "
                    f"{path.name} from rank {owner}, which reported no progress in {self.world.timeout_s:.0f} s "
                    "(GDIG_COLLECTIVE_TIMEOUT)"
                )
            time.sleep(pause)
            pause = min(pause * 2, 0.2)

    def carried_seeds(self, group: int, fp: str) -> SeedGradients:
        """The sums over the modules before group `group` (self-influence and index rows), from the seeds the
        previous group saved: read without that group's seed gradients."""
        part = part_name(self.parts, group - 1)
        path = seeds_path(self.run_dir, part)
        # the meta is written after the seeds; seeds of other settings are being made again by their owner
        self.wait_for(seeds_meta_path(self.run_dir, part), group - 1, lambda: read_fingerprint(path) == fp)
        return load_seed_sums(path)

    def wait_for_every_group(self) -> None:
        """Block until every module group is done (its record written): the groups end one after another, so a
        process done with its own waits on their owners' progress rather than on a collective's clock."""
        for g in range(self.parts):
            self.wait_for(self._record(g), g)

    def _record(self, group: int) -> Path:
        return partial_dir(self.run_dir) / part_name(self.parts, group) / GROUP_RECORD

    def save_record(self, group: int, dampings: dict[str, float], factors: dict) -> None:
        """What rank 0 needs of a group it did not run: its modules' dampings and the factors' record."""
        path = self._record(group)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"dampings": dampings, "factors": factors})

    def gathered(self, device) -> StageResults:
        """Every group's results as the last group's pass would have left them in one process: its seeds' sums
        (on `device`), the seeds' loss, tokens and rank, and every group's dampings and low-rank errors (rank 0,
        after all groups are done)."""
        last = part_name(self.parts, self.parts - 1)
        seeds = load_seed_sums(seeds_path(self.run_dir, last), device)
        lowrank, dampings, factors = {}, {}, {}
        for g in range(self.parts):
            part = part_name(self.parts, g)
            lowrank |= load_seed_sums(seeds_path(self.run_dir, part)).lowrank_error
            record = json.loads(self._record(g).read_text())
            dampings |= record["dampings"]
            factors = record["factors"]
        seeds.lowrank_error = lowrank
        loss, ntok, rank = load_seed_meta(self.run_dir, last) or (np.zeros(0), np.zeros(0), None)
        return StageResults(seeds, loss, ntok, rank, dampings, factors)


def shards_of(ctx: ScoreContext, run_dir: Path, parts: int, status: Status) -> Shards | None:
    """The run's shards when it has --shard-factors and more than one process, else None."""
    if not (ctx.cfg.shard_factors and ctx.world.active):
        return None
    return Shards(ctx.world, run_dir, parts, status)


def least_groups(shard_factors: bool, module_partitions: int, processes: int) -> int:
    """The fewest module groups a run may have: one per process with --shard-factors (else 1); an explicit
    --module-partitions below that is refused before anything runs."""
    if not shard_factors or processes < 2:
        return 1
    if 0 < module_partitions < processes:
        raise ValueError(
            f"--shard-factors with {processes} processes needs at least {processes} module groups, one per process "
            f"(--module-partitions is {module_partitions}): give --module-partitions 0 or >= {processes}"
        )
    return processes
