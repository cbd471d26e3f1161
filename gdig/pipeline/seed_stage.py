"""The seed stage of `gdig score`: every seed's gradient, grouped by --seed-batch and preconditioned once, kept
dense or at low rank (gdig.engine.seeds.SeedBuilder), shared between processes, saved in partial/ for a
resumed run."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from gdig.atomic import write_json_atomic
from gdig.engine.curvature import Curvature
from gdig.engine.hooks import Captured, per_example_gradient
from gdig.engine.memory import SEED_WORK_BYTES, budget_mb, capture_bytes, seed_rank, usable_memory_mb
from gdig.engine.seeds import SeedBuilder, SeedGradients, group_seed_gradients
from gdig.pipeline.context import ScoreContext, by_length
from gdig.pipeline.stages import detached, index_projection
from gdig.rundir.chunks import partial_dir
from gdig.rundir.layout import read_fingerprint
from gdig.rundir.status import Status

SEED_RANK = "seed_rank.json"  # in partial/: the seeds' rank, once decided


def seed_ranks(ctx: ScoreContext, n_columns: int, run_dir: Path | None = None) -> dict[str, int | None]:
    """The rank each module's seeds are kept at: --seed-rank when given; otherwise dense when all seeds fit in
    --seed-memory-mb (auto: a quarter of the free memory, at most 8 GiB), else the largest common rank that
    fits (per seed and token, a rank-r module costs r (d_in + d_out) multiply-adds to score). Every process
    uses the smallest rank any of them can hold. Decided once per run (`run_dir`: kept in partial/), so that
    every module group and a resumed job, with any number of groups or processes, keep the same rank."""
    if ctx.cfg.seed_rank is not None:
        return dict.fromkeys(ctx.dims, ctx.cfg.seed_rank)
    dense = 2**62
    path = None if run_dir is None else partial_dir(run_dir) / SEED_RANK
    if path is not None and path.exists():  # read by every process before rank 0 could write it (collective below)
        rank = json.loads(path.read_text())["rank"]
    else:
        budget = budget_mb(ctx.cfg.seed_memory_mb, usable_memory_mb(ctx.device, ctx.cfg.memory_gb), 4)
        rank = seed_rank(ctx.dims, n_columns, budget * 2**20)
    rank = ctx.world.all_reduce_min(dense if rank is None else rank, "agreeing on the seeds' rank")
    rank = None if rank == dense else rank
    if path is not None and ctx.world.is_main and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"rank": rank})
    return dict.fromkeys(ctx.dims, rank)


def seed_chunks(ctx: ScoreContext) -> list[list[int]]:
    """Seeds in chunks of whole --seed-batch groups, what each chunk's compacted captures keep within
    SEED_WORK_BYTES (memory.capture_bytes: a LoRA matrix's per-example gradient, not its tokens), so their memory
    does not grow with the number of seeds while chunks stay large: each chunk's batches are sorted by length and
    the last one is partly empty. Made from every module of the run (ctx.dims), so module groups share them."""
    k = ctx.cfg.seed_batch
    dims = list(ctx.dims.values())
    chunks, current, size = [], [], 0
    for start in range(0, len(ctx.seed_tok), k):
        group = list(range(start, min(start + k, len(ctx.seed_tok))))
        cost = int(capture_bytes([(1, len(ctx.seed_tok[i].input_ids)) for i in group], dims).sum())
        if current and size + cost > SEED_WORK_BYTES:
            chunks.append(current)
            current, size = [], 0
        current, size = current + group, size + cost
    return chunks + ([current] if current else [])


def seed_stage(
    ctx: ScoreContext,
    cur: Curvature,
    dampings: dict[str, float],
    status: Status,
    carried: SeedGradients | None,
    run_dir: Path | None = None,
):
    """Seed gradients, grouped by --seed-batch and preconditioned one (module, chunk) at a time; also each
    seed's loss and token count, and the ranks used. With several processes each does its share of the chunks
    (by tokens), then every chunk is broadcast from the rank that made it, so all hold every seed. `carried`:
    the seeds of the module groups before this one (see SeedBuilder)."""
    t0 = time.time()
    m, k = len(ctx.seed_tok), ctx.cfg.seed_batch
    n_columns = -(-m // k)
    ranks = seed_ranks(ctx, n_columns, run_dir)
    projection = index_projection(ctx)
    builder = SeedBuilder(ctx.work_dims, n_columns, cur, dampings, ranks, ctx.device, projection, carried)
    loss = torch.zeros(m, dtype=torch.float32, device=ctx.device)
    n_tok = torch.zeros(m, dtype=torch.int64, device=ctx.device)
    chunks = seed_chunks(ctx)
    owners = ctx.world.owners([sum(len(ctx.seed_tok[i].input_ids) for i in c) for c in chunks])
    mine = [c for c, owner in zip(chunks, owners, strict=True) if owner == ctx.world.rank]
    total = sum(len(c) for c in mine)
    status.update("seeds", 0, total, force=True)
    done = 0
    with ctx.capture() as capture:
        for chunk in mine:
            caps = []
            for batch in ctx.batches(ctx.seed_tok, by_length(ctx.seed_tok, chunk)):
                cap = capture.run(batch)
                caps.append(detached(cap).compact())  # kept gradients in place of their tokens
                loss[batch.index] = cap.loss.detach().float()
                n_tok[batch.index] = cap.n_target.to(torch.int64)
                del cap  # its whole capture (the chunk keeps the compacted one) not held while the next is made
                done += len(batch.index)
                status.update("seeds", done, total)
            _add_chunk(ctx, builder, caps, chunk)
    if ctx.world.active:
        ctx.world.barrier("waiting for every rank's seeds", status.refresh)
        for chunk, owner in zip(chunks, owners, strict=True):
            rows, cols = slice(chunk[0], chunk[-1] + 1), slice(chunk[0] // k, chunk[-1] // k + 1)
            ctx.world.broadcast([loss[rows], n_tok[rows], *builder.column_views(cols)], owner, "sharing the seeds")
    ctx.timings["seeds"] = ctx.timings.get("seeds", 0.0) + time.time() - t0
    rank = next(iter(ranks.values())) if len(set(ranks.values())) == 1 else None
    return builder.finish(), loss.cpu().numpy(), n_tok.cpu().numpy(), rank


def _add_chunk(ctx: ScoreContext, builder: SeedBuilder, caps: list[Captured], chunk: list[int]) -> None:
    """Each module's seed columns for one chunk of seeds, handed to the builder as their tokens (cheaper to
    precondition, see add_tokens), or as grouped per-example gradients where the captures keep them
    (hooks.keeps_gradient: a LoRA matrix, or a small layer and long seeds) or where there is no curvature."""
    first, k = chunk[0], ctx.cfg.seed_batch
    for t in ctx.work:
        if not builder.takes_tokens(t.name):
            builder.add(t.name, first // k, _column_gradients(caps, t.name, first, len(chunk), k))
        elif any(t.name in cap.weight_grads for cap in caps):
            builder.add_gradients(t.name, first // k, _column_gradients(caps, t.name, first, len(chunk), k))
        else:
            a, g = _column_tokens(caps, t.name, first, len(chunk), k)
            builder.add_tokens(t.name, first // k, a, g)


def _column_gradients(caps: list[Captured], name: str, first: int, n: int, k: int) -> torch.Tensor:
    """The gradient of each seed column (columns, d_out, d_in): its seeds' per-example gradients (kept by the
    capture, or formed from its tokens), averaged in groups of k."""
    grads = None
    for cap in caps:
        grad = cap.gradient(name)
        grad = per_example_gradient(cap.acts[name], cap.grads[name]) if grad is None else grad
        grads = grad.new_zeros(n, *grad.shape[1:]) if grads is None else grads
        grads[torch.tensor(cap.index, device=grad.device) - first] = grad
    return group_seed_gradients({name: grads}, k)[name]


def _column_tokens(caps: list[Captured], name: str, first: int, n: int, k: int):
    """The tokens of each seed column, (columns, k * T, d): a column's gradient sum_t g_t a_t^T is then the mean
    of its k seeds' gradients (g scaled by 1 / the group's size; padding positions are zero)."""
    width = max(cap.acts[name].shape[1] for cap in caps)
    columns = -(-n // k)
    sample = caps[0]
    a = sample.acts[name].new_zeros(columns * k, width, sample.acts[name].shape[-1])
    g = sample.grads[name].new_zeros(columns * k, width, sample.grads[name].shape[-1])
    for cap in caps:
        rows = torch.tensor(cap.index, device=a.device) - first
        a[rows, : cap.acts[name].shape[1]] = cap.acts[name]
        g[rows, : cap.grads[name].shape[1]] = cap.grads[name]
    sizes = torch.full((columns,), float(k), device=g.device)
    sizes[-1] = n - (columns - 1) * k
    g = g / sizes.repeat_interleave(k)[:, None, None]
    return a.reshape(columns, k * width, -1), g.reshape(columns, k * width, -1)


def load_or_make_seeds(
    ctx: ScoreContext,
    cur: Curvature,
    dampings: dict[str, float],
    run_dir: Path,
    status: Status,
    fp: str,
    part: str = "",
    carried: SeedGradients | None = None,
) -> tuple[SeedGradients, np.ndarray, np.ndarray, int | None]:
    """The preconditioned seeds, reused from partial/ when an earlier process of this run finished them (`part`
    and `carried`: one module group's, see gdig.pipeline.partitions)."""
    from gdig.rundir.seeds import load_seed_gradients, load_seed_meta, save_seed_gradients, save_seed_meta, seeds_path

    path = seeds_path(run_dir, part)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = load_seed_meta(run_dir, part)
    if meta is not None and read_fingerprint(path) == fp:  # metadata only, not the tensors
        seeds, _ = load_seed_gradients(path, ctx.device)
        return (seeds, *meta)
    seeds, seed_loss, seed_ntok, rank = seed_stage(ctx, cur, dampings, status, carried, run_dir)
    if ctx.world.is_main:
        save_seed_gradients(path, seeds, fp)
        save_seed_meta(run_dir, seed_loss, seed_ntok, rank, part)
    ctx.world.barrier("saving the seeds", status.refresh)
    seeds, _ = load_seed_gradients(path, ctx.device)  # same bytes as a resumed run
    return seeds, seed_loss, seed_ntok, rank
