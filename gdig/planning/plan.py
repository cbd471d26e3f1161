"""A memory and time plan before a long run (`gdig score --plan`): per stage, the bytes each part needs (model,
activations and captures of one batch, reused captures, factors, seeds at their rank, result buffers) and a
time estimate from a short probe; and when the plan does not fit, which knob saves how much.

Works for models too large for this machine: built on the meta device from their config (no weights), where
the activations come from a formula instead of the probe and token counts from the text length."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from gdig.config import ScoreConfig
from gdig.engine.hooks import batch_groups, padded_batches
from gdig.engine.index import BYTES_PER_COORDINATE, CACHED_COORDINATES
from gdig.engine.memory import (
    SEED_BLOCK_BYTES,
    SEED_BLOCK_COPIES,
    SEED_WORK_BYTES,
    budget_mb,
    capture_bytes,
    captures_reusable,
    kept_capture_bytes,
    module_groups,
    seed_rank,
)
from gdig.hessians import hessian
from gdig.hessians.base import COVARIANCE_PASS, EIGENVALUE_PASS
from gdig.planning.disk import DiskPlan, plan_disk
from gdig.planning.timing import stage_seconds
from gdig.selection.signals import DETECTOR_BYTES

GiB = 2**30


@dataclass
class Workload:
    """What a run will process: tracked module sizes, model bytes and every example's token count (in batch
    order, longest first)."""

    dims: dict[str, tuple[int, int]]
    model_bytes: int
    runtime_bytes: int  # the process before the model (interpreter, libraries)
    cand_lengths: list[int]
    seed_lengths: list[int]
    activation_bytes_per_token: float  # forward + backward of the model, per padded token of a batch
    fit_lengths: list[int] | None = None  # the curvature's fit set (longest first); None: every candidate
    seconds_per_token: float | None = None  # from the probe
    flops_per_second: float | None = None  # float32 matrix products on the device, from the probe
    eigh_flops_per_second: float | None = None  # float64 eigendecompositions, counted as 9 n^3, from the probe
    # padded batch sizes, computed once and shared by the workloads of every module group (dataclasses.replace)
    _batches: dict = field(default_factory=dict, repr=False, compare=False)

    def padded(self, which: str, cfg: ScoreConfig) -> list[int]:
        """Padded tokens of each batch of the candidates, the fit set or the seeds (`which`) by cfg's batching."""
        lengths = {"candidates": self.cand_lengths, "fit": self.fit_set, "seeds": self.seed_lengths}[which]
        key = (id(lengths), len(lengths), cfg.batch_size, cfg.token_budget)  # these very lengths (alive with self)
        if key not in self._batches:
            self._batches[key] = padded_batches(lengths, cfg.batch_size, cfg.token_budget)
        return self._batches[key]

    def shapes(self, which: str, cfg: ScoreConfig) -> list[tuple[int, int]]:
        """(examples, padded length) of each batch of `which` (see padded)."""
        lengths = {"candidates": self.cand_lengths, "fit": self.fit_set, "seeds": self.seed_lengths}[which]
        key = ("shapes", id(lengths), len(lengths), cfg.batch_size, cfg.token_budget)
        if key not in self._batches:
            groups = batch_groups(lengths, cfg.batch_size, cfg.token_budget)
            self._batches[key] = [(len(g), max(lengths[p] for p in g)) for g in groups]
        return self._batches[key]

    def kept_capture_bytes(self, cfg: ScoreConfig) -> int:
        """The fit set's kept captures as the fit's budget rule counts them (gdig.engine.memory.captures_fit)."""
        dims = list(self.dims.values())
        key = ("kept", id(self.fit_set), len(self.fit_set), cfg.batch_size, cfg.token_budget is not None, *dims)
        if key not in self._batches:
            self._batches[key] = kept_capture_bytes(self.fit_set, dims, cfg.batch_size, cfg.token_budget is not None)
        return self._batches[key]

    def batch_bytes(self, which: str, cfg: ScoreConfig, part: str) -> list[int]:
        """capture_bytes (gdig.engine.memory) of each batch of `which` over this workload's modules."""
        return capture_bytes(self.shapes(which, cfg), list(self.dims.values()), part).tolist()

    @property
    def n_candidates(self) -> int:
        """Number of candidates."""
        return len(self.cand_lengths)

    @property
    def fit_set(self) -> list[int]:
        """Token counts of the examples the curvature is fitted on, longest first."""
        return self.cand_lengths if self.fit_lengths is None else self.fit_lengths

    @property
    def n_seeds(self) -> int:
        """Number of seeds."""
        return len(self.seed_lengths)

    def n_columns(self, seed_batch: int) -> int:
        """Seed columns: the seeds in groups of --seed-batch."""
        return -(-self.n_seeds // seed_batch)

    @property
    def seed_tokens(self) -> int:
        """Tokens of all seeds, unpadded."""
        return sum(self.seed_lengths)


@dataclass
class Plan:
    """Bytes per stage and part, the time per stage, and the memory the device has."""

    stages: dict[str, dict[str, float]]
    seconds: dict[str, float]
    available_bytes: float
    seed_rank: int | None
    notes: list[str] = field(default_factory=list)
    partitions: int = 1  # module groups the plan is for (--module-partitions; chosen here when given as 0)
    partitions_to_fit: int | None = None  # when it does not fit: the fewest module groups that would
    disk: DiskPlan | None = None  # what the run writes at its fullest

    def peak(self, stage: str) -> float:
        """The most memory stage `stage` holds at once."""
        return sum(self.stages[stage].values())

    @property
    def worst(self) -> tuple[str, float]:
        """The stage with the highest peak, and that peak."""
        stage = max(self.stages, key=self.peak)
        return stage, self.peak(stage)

    @property
    def fits(self) -> bool:
        """Whether every stage's peak fits in the memory available."""
        return self.worst[1] <= self.available_bytes


def plan_run(cfg: ScoreConfig, w: Workload, available_bytes: float, processes: int = 1) -> Plan:
    """The plan of `gdig score` with these settings on this workload. In module groups (--module-partitions)
    every stage holds one group's captures, factors and seeds at a time: its peak is its largest group's, its
    time the groups' sum (each group makes its own passes over the data). With --shard-factors over `processes`
    processes, each process's: its groups' (at least one group per process), the groups' time shared out."""
    sharded = cfg.shard_factors and processes > 1
    least = min(processes, len(w.dims)) if sharded else 1
    whole = _plan(cfg, w, available_bytes)
    if cfg.module_partitions == 0:  # auto: one group when it fits, else the fewest groups that fit
        parts = 1 if whole.fits else fewest_partitions(cfg, w, available_bytes)
        parts = None if parts is None else max(parts, least)
        plan = whole if parts in (None, 1) else _in_groups(replace(cfg, module_partitions=parts), w, whole)
        chosen = "no number of module groups fits" if parts is None else f"{plan.partitions} group(s)"
        plan.notes.append(f"--module-partitions 0 (auto): {chosen}")
    else:
        plan = whole if cfg.module_partitions == 1 or len(w.dims) < 2 else _in_groups(cfg, w, whole)
        if not plan.fits:
            plan.partitions_to_fit = fewest_partitions(cfg, w, available_bytes)
    seeds = _seed_bytes(cfg, w, available_bytes, plan.seed_rank)[1]
    plan.disk = plan_disk(cfg, w.dims, w.n_candidates, w.n_columns(cfg.seed_batch), plan.partitions, processes, seeds)
    return _per_process(plan, processes) if sharded else plan


def _per_process(plan: Plan, processes: int) -> Plan:
    """A plan in module groups as each process of a --shard-factors job sees it: the same peaks (one group at a
    time, over all the data), about 1 / processes of the fits' and the scores' time (side by side; the seeds go
    one group after another, and what comes after the groups is rank 0's)."""
    share = min(processes, plan.partitions)
    if share < 2:  # nothing fits, or one group: nothing is shared
        return plan
    shared = (COVARIANCE_PASS, EIGENVALUE_PASS, "score")
    plan.seconds = {stage: s / share if stage in shared else s for stage, s in plan.seconds.items()}
    plan.notes.append(
        f"--shard-factors over {processes} processes: per process, its {plan.partitions // share} or "
        f"{-(-plan.partitions // share)} of the {plan.partitions} module groups, each over all the data; each "
        "process holds these peaks at once"
    )
    return plan


def _in_groups(cfg: ScoreConfig, w: Workload, whole: Plan) -> Plan:
    """The plan in cfg.module_partitions groups of modules, from `whole`, the plan in one."""
    available_bytes = whole.available_bytes
    names = list(w.dims)
    groups = module_groups(list(w.dims.values()), cfg.module_partitions)
    plans = [
        _plan(cfg, replace(w, dims={names[i]: w.dims[names[i]] for i in g}), available_bytes, whole.seed_rank, w.dims)
        for g in groups
    ]
    stages = {
        stage: dict(max((p.stages[stage] for p in plans), key=lambda d: sum(d.values()))) for stage in whole.stages
    }
    score = stages["score"]
    score["carried sums (one chunk)"] = score["chunk buffers"]
    # one group's seeds, and its factors: its dense seeds' mean is rotated back out of their eigenbasis
    final = whole.stages["finalize"] | {k: stages["finalize"][k] for k in ("factors", "seeds")}
    stages["finalize"] = final
    seconds = {stage: sum(p.seconds.get(stage, 0.0) for p in plans) for stage in whole.seconds}
    note = f"in {len(groups)} module groups: each stage's peak is its largest group's, the passes made once per group"
    return Plan(stages, seconds, available_bytes, whole.seed_rank, whole.notes + [note], len(groups))


def fewest_partitions(cfg: ScoreConfig, w: Workload, available_bytes: float) -> int | None:
    """The fewest module groups (--module-partitions) whose plan fits, or None when even one module per group
    does not. A bisection: the peak falls as the groups grow in number, but not strictly (the largest group can
    grow by a few percent from one number to the next), so it may be a group or two more than the fewest."""
    whole = _plan(cfg, w, available_bytes)
    if whole.fits:
        return 1

    def fits(parts: int) -> bool:
        return _in_groups(replace(cfg, module_partitions=parts), w, whole).fits

    low, high = 1, len(w.dims)  # low does not fit; high is the most there can be
    if not fits(high):
        return None
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if fits(mid) else (mid, high)
    return high


def _plan(
    cfg: ScoreConfig, w: Workload, available_bytes: float, rank: int | None = None, run_dims: dict | None = None
) -> Plan:
    """The plan over the workload's modules at once. When a group is planned: `rank`, the seeds' rank (the run's,
    chosen from every module) and `run_dims`, every module's sizes (the seeds' chunks are made from them)."""
    capture = 4 * sum(d_in + d_out for d_in, d_out in w.dims.values())  # a and g of one token, float32
    widest = max((d_in * d_out for d_in, d_out in w.dims.values()), default=0)
    sq = sum(d_in * d_in + d_out * d_out for d_in, d_out in w.dims.values())
    rect = sum(d_in * d_out for d_in, d_out in w.dims.values())
    h = hessian(cfg.hessian)
    factors = 4 * sum(h.factor_numbers(d_in, d_out) for d_in, d_out in w.dims.values())
    cand_batches = w.padded("candidates", cfg)
    fit_batches = w.padded("fit", cfg)
    base = {"runtime": w.runtime_bytes, "model": w.model_bytes}
    reuse = _reused_captures(cfg, w, available_bytes - sum(base.values()))
    rank, seeds = _seed_bytes(cfg, w, available_bytes, rank)
    batch = _batch(w, max(cand_batches, default=0), capture)
    formed = {"per-example gradients (one batch)": max(w.batch_bytes("candidates", cfg, "gradients"), default=0)}
    stages = {"load": dict(base)}
    fit = _growing_cache(w, cfg) if reuse else _batch(w, max(fit_batches, default=0), capture)
    if h.eigendecomposes:
        stages[COVARIANCE_PASS] = base | fit | {"factor sums (float64)": 8 * sq}
        beyond = reuse + _eigendecomposition_peak(w.dims) - sum(fit.values()) - 8 * sq
        if beyond > 0:
            stages[COVARIANCE_PASS]["factors beyond the sums (eigh)"] = beyond
    if EIGENVALUE_PASS in h.passes:  # replays the kept captures of an earlier pass, or runs the model
        replay = {"reused captures": reuse} if reuse and h.passes[0] != EIGENVALUE_PASS else fit
        if not reuse:  # each batch forms its gradients where it works from them (a kept capture counts its own)
            replay = replay | {
                "per-example gradients (one batch)": max(w.batch_bytes("fit", cfg, "gradients"), default=0)
            }
        stages[EIGENVALUE_PASS] = base | replay | {"factors": factors, "eigenvalue sums (float64)": 8 * rect}
        # each module's per-example gradients in the basis, and their squares
        stages[EIGENVALUE_PASS]["per-example gradient and its square (one module)"] = 8 * cfg.batch_size * widest
    singles = [(1, t) for t in w.seed_lengths]  # seed chunks: what each seed's compacted capture keeps, of every module
    every = float(capture_bytes(singles, list((run_dims or w.dims).values())).sum())
    chunks = max(1, -(-every // SEED_WORK_BYTES))
    columns = w.n_columns(cfg.seed_batch) / chunks  # a chunk's, preconditioned a block of columns at a time
    block = 4 * widest * min(columns, max(1, SEED_BLOCK_BYTES // (4 * widest)) if widest else columns)
    block_work = SEED_BLOCK_COPIES * block + 8 * widest
    if cfg.index_dim:  # a block's 2 k index sums and their difference
        block_work += 12 * cfg.index_dim * block / max(4 * widest, 1)
    kept_here = float(capture_bytes(singles, list(w.dims.values())).sum())  # this group's share of what chunks keep
    chunk_captures = min(SEED_WORK_BYTES * kept_here / max(every, 1), kept_here)
    # a batch's activations and its whole captures, alive until the batch is compacted into its chunk
    batch_work = sum(_batch(w, max(w.padded("seeds", cfg), default=0), capture).values())
    # a chunk's captures are held while its batches run, then while each module's blocks are preconditioned
    seed_work = {"seed captures (one chunk)": chunk_captures, "batch or block work": max(batch_work, block_work)}
    scored_from_cache = reuse > 0 and len(w.fit_set) == w.n_candidates  # scoring meets the fit's batches
    kept = {"reused captures": reuse if scored_from_cache else 0.0, "factors": factors, "seeds": seeds}
    kept["seeds' index rows"] = 4 * w.n_seeds * cfg.index_dim
    if cfg.index_dim:  # the projection's kept hashes, from the seeds' index rows on (one group's, in groups)
        kept["index hashes"] = BYTES_PER_COORDINATE * min(rect, CACHED_COORDINATES)
    stages["seeds"] = base | kept | seed_work
    scoring = {
        "per-example gradient, whitened and squared (one module)": 12 * cfg.batch_size * widest,
        "chunk buffers": 4 * cfg.chunk_size * (w.n_seeds + cfg.sketch_dim + 4) + 6 * cfg.chunk_size * cfg.index_dim,
    }
    if cfg.index_dim:  # a module's 2 k sums, their difference and the batch's sum (the kept slots: `kept`)
        scoring["index rows (batch)"] = 4 * 4 * cfg.batch_size * cfg.index_dim
    stages["score"] = base | ({} if scored_from_cache else batch | formed) | kept | scoring
    if cfg.adequacy:  # forward passes only (at most a scoring batch's activations); factors and seeds still held
        stages["adequacy"] = base | batch | {"factors": factors, "seeds": seeds}
    stages["finalize"] = base | {
        "factors": factors,
        "seeds": seeds,
        "mean seed direction": 4 * rect,
        "language identification": DETECTOR_BYTES,
        "result columns": 64 * w.n_candidates,
    }
    notes = [] if w.seconds_per_token else ["no probe (no weights): time not estimated"]
    seconds = stage_seconds(cfg, w, sum(cand_batches), sum(fit_batches), reuse > 0, rank)
    return Plan(stages, seconds, available_bytes, rank, notes)


def _batch(w: Workload, tokens: int, capture: float) -> dict[str, float]:
    return {"activations (one batch)": w.activation_bytes_per_token * tokens, "captures (one batch)": capture * tokens}


def _growing_cache(w: Workload, cfg: ScoreConfig) -> dict[str, float]:
    """The fit pass keeps every batch's capture: its peak is the largest (kept so far + this batch's tokens that
    its kept gradients replace, alive until the batch is done + its activations), batches longest first."""
    best, kept = (0.0, 0.0), 0.0
    shapes = w.shapes("fit", cfg)
    kept_bytes, replaced = w.batch_bytes("fit", cfg, "kept"), w.batch_bytes("fit", cfg, "replaced")
    for (n, width), k, r in zip(shapes, kept_bytes, replaced, strict=True):
        kept += k
        now = (kept + r, w.activation_bytes_per_token * n * width)
        best = max(best, now, key=sum)
    return {"reused captures (kept so far)": best[0], "activations (one batch)": best[1]}


def _reused_captures(cfg: ScoreConfig, w: Workload, free: float) -> float:
    """Bytes of the fit pass's kept captures, by the fit stage's own rules (gdig.engine.memory) with the memory
    left once the model is loaded (`free`)."""
    budget = budget_mb(cfg.fit_cache_mb, free / 2**20, 3)
    fits = 1.1 * w.kept_capture_bytes(cfg) <= budget * 2**20  # gdig.engine.memory.captures_fit's rule
    keep = captures_reusable(cfg.hessian, len(w.fit_set), w.n_candidates) and fits
    return float(sum(w.batch_bytes("fit", cfg, "kept"))) if keep else 0.0


# torch.linalg.eigh of a float64 n x n matrix on a CPU (LAPACK syevd): its eigenvectors (8 n^2 bytes) and the
# workspace syevd asks for (1 + 6n + 2n^2 doubles): 1.5 GiB beside the sums for a 1B model's 8,192-wide factor
# (its sums are divided in place; a divided copy was 0.5 GiB more).
EIGH_WORK_BYTES_PER_ENTRY = 24


def _eigendecomposition_peak(dims: dict[str, tuple[int, int]]) -> float:
    """Bytes held while the factors are made module by module, each module's float64 sums released once its
    float32 factors exist (gdig.engine.curvature_fit.CovarianceFitter.eigendecompose), with eigh's own work."""
    sums = [8 * (d_in * d_in + d_out * d_out) for d_in, d_out in dims.values()]
    made = [4 * (d_in * d_in + d_out * d_out + d_in * d_out) for d_in, d_out in dims.values()]
    work = [EIGH_WORK_BYTES_PER_ENTRY * max(d_in, d_out) ** 2 for d_in, d_out in dims.values()]
    peak, left, done = float(sum(sums)), float(sum(sums)), 0.0
    for s, f, eigh in zip(sums, made, work, strict=True):
        peak = max(peak, left + done + eigh)  # while its wider side is decomposed
        done += f
        peak = max(peak, left + done)
        left -= s
    return peak


def _seed_bytes(cfg: ScoreConfig, w: Workload, available: float, rank: int | None = None) -> tuple[int | None, float]:
    """The seeds' rank (None: dense) and bytes, by the seed stage's own rule (gdig.engine.memory.seed_rank), or
    at the `rank` given."""
    columns = w.n_columns(cfg.seed_batch)
    rank = cfg.seed_rank if rank is None else rank
    if rank is None:
        rank = seed_rank(w.dims, columns, budget_mb(cfg.seed_memory_mb, available / 2**20, 4) * 2**20)
    dense = 4 * columns * sum(d_in * d_out for d_in, d_out in w.dims.values())
    per_rank = 4 * columns * sum(d_in + d_out for d_in, d_out in w.dims.values())
    return rank, dense if rank is None else min(dense, per_rank * rank)
