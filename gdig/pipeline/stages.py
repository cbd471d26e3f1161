"""The stages of `gdig score` over one context: fit the curvature, precondition the seeds, score the candidates
in resumable chunks, map the sketches. The run directory's files are written through gdig.rundir."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import torch

from gdig.engine.curvature import Curvature
from gdig.engine.curvature_fit import fit_curvature
from gdig.engine.hooks import Captured, GradientCapture, per_example_gradient
from gdig.engine.index import make_projection
from gdig.engine.index_scoring import IndexRows
from gdig.engine.influence import Scorer, SeedBuilder, SeedGradients, group_seed_gradients
from gdig.engine.memory import SEED_WORK_BYTES, budget_mb, captures_fit, captures_reusable, free_memory_mb, seed_rank
from gdig.engine.sketch import Sketcher
from gdig.hessians import hessian
from gdig.pipeline.context import ScoreContext, by_length, factors_fingerprint, fit_subset, short_hash
from gdig.rundir.checkpoint import FitCheckpoint
from gdig.rundir.chunks import chunk_path, partial_dir, write_chunk
from gdig.rundir.factors import load_factors, save_factors
from gdig.rundir.index import INDEX_PROJECTED_NORM, INDEX_ROW_SCALE, INDEX_ROWS
from gdig.rundir.layout import CONFIG, FACTORS, read_config, read_fingerprint, write_config
from gdig.rundir.status import Status


def fit_stage(ctx: ScoreContext, run_dir: Path, status: Status) -> Curvature:
    """The run's curvature: reused from this run or another with the same fingerprint, or fitted (resumably,
    each process on its share of the fit set's batches)."""
    path = run_dir / FACTORS
    fp = factors_fingerprint(ctx)
    fit_passes = hessian(ctx.cfg.hessian).passes
    if not fit_passes:
        return Curvature(ctx.cfg.hessian)
    if ctx.world.is_main and read_fingerprint(path) != fp:
        donor = _find_factors(run_dir.parent, fp, exclude=run_dir)
        if donor is not None:
            shutil.copyfile(donor, path)
    ctx.world.barrier("looking for reusable factors", status.refresh)
    if read_fingerprint(path) == fp:
        ctx.timings["factors_reused"] = 1.0
        return load_factors(path, ctx.device)
    fit_idx = fit_subset(len(ctx.cand_tok), ctx.cfg.fit_examples, ctx.cfg.random_state)
    order = by_length(ctx.cand_tok, fit_idx)
    batches = ctx.batch_indices(ctx.cand_tok, order)
    costs = [len(b) * max(len(ctx.cand_tok[i].input_ids) for i in b) for b in batches]  # padded tokens
    useful = captures_reusable(ctx.cfg.hessian, len(fit_idx), len(ctx.cand_tok))
    cache: dict[int, Captured] | None = {} if useful and _captures_fit(ctx, order) else None

    def passes(stage: str, mine: list[int], covered: list[int]):
        t0 = time.time()
        done = sum(len(batches[b]) for b in covered)  # rank 0 reports the batches its checkpoint covers as done
        total = done + sum(len(batches[b]) for b in mine)
        status.update(stage, done, total, force=True)
        with GradientCapture(ctx.model, ctx.tracked) as capture:
            for b in mine:
                cap = cache.get(b) if cache is not None and stage != fit_passes[0] else None
                if cap is None:
                    cap = capture.run(ctx.collate(ctx.cand_tok, batches[b]))
                    if cache is not None and stage == fit_passes[0]:
                        cache[b] = _detached(cap)
                yield b, cap
                done += len(batches[b])
                status.update(stage, done, total)
        ctx.timings[stage] = ctx.timings.get(stage, 0.0) + time.time() - t0

    batching = [ctx.cfg.batch_size, ctx.cfg.token_budget]
    checkpoint = FitCheckpoint(
        partial_dir(run_dir), short_hash([fp, batching, "v2"]), ctx.cfg.checkpoint_seconds, rank=ctx.world.rank
    )
    cur = fit_curvature(ctx.cfg.hessian, ctx.dims, passes, costs, ctx.device, checkpoint, ctx.world, status.refresh)
    if ctx.world.is_main:
        save_factors(cur, path, fp)
    del cur  # reloaded below: never two copies of the factors
    ctx.world.barrier("saving the factors", status.refresh)
    if cache and len(fit_idx) == len(ctx.cand_tok) and not ctx.world.active:  # scoring meets the same batches
        ctx.captures = {tuple(batches[b]): c for b, c in cache.items()}
    cache = None  # the captures go now, not when this returns: their memory is back before the seeds need it
    return load_factors(path, ctx.device)  # a fresh and a resumed run compute from the same bytes


def _captures_fit(ctx: ScoreContext, order: list[int]) -> bool:
    """Whether every fit batch's captured a and g fit in --fit-cache-mb (auto: a third of free memory, <= 8 GiB)."""
    budget = budget_mb(ctx.cfg.fit_cache_mb, free_memory_mb(ctx.device), 3)
    per_token = 4 * sum(t.d_in + t.d_out for t in ctx.tracked)
    lengths = [len(ctx.cand_tok[i].input_ids) for i in order]
    return captures_fit(lengths, per_token, ctx.cfg.batch_size, ctx.cfg.token_budget is not None, budget)


def _detached(cap: Captured) -> Captured:
    acts = {k: v.detach() for k, v in cap.acts.items()}
    grads = {k: v.detach() for k, v in cap.grads.items()}
    return Captured(cap.index, cap.loss.detach(), cap.n_target.detach(), cap.mask, acts, grads)


def _find_factors(runs_root: Path, fingerprint: str, exclude: Path) -> Path | None:
    if not runs_root.is_dir():
        return None
    for cand in sorted(runs_root.glob(f"*/{FACTORS}")):
        if cand.parent.resolve() != exclude.resolve() and read_fingerprint(cand) == fingerprint:
            return cand
    return None


def dampings_for(ctx: ScoreContext, cur: Curvature) -> dict[str, float]:
    """lambda per tracked module: absolute, or relative to the module's mean eigenvalue."""
    return {t.name: cur.damping(t.name, ctx.cfg.damping, ctx.cfg.damping_relative) for t in ctx.tracked}


def seed_ranks(ctx: ScoreContext, n_columns: int) -> dict[str, int | None]:
    """The rank each module's seeds are kept at: --seed-rank when given; otherwise dense when all seeds fit in
    --seed-memory-mb (auto: a quarter of the free memory, at most 8 GiB), else the largest common rank that
    fits (per seed and token, a rank-r module costs r (d_in + d_out) multiply-adds to score). Every process
    uses the smallest rank any of them can hold."""
    if ctx.cfg.seed_rank is not None:
        return dict.fromkeys(ctx.dims, ctx.cfg.seed_rank)
    budget = budget_mb(ctx.cfg.seed_memory_mb, free_memory_mb(ctx.device), 4)
    rank = seed_rank(ctx.dims, n_columns, budget * 2**20)
    dense = 2**62
    rank = ctx.world.all_reduce_min(dense if rank is None else rank, "agreeing on the seeds' rank")
    return dict.fromkeys(ctx.dims, None if rank == dense else rank)


def seed_chunks(ctx: ScoreContext) -> list[list[int]]:
    """Seeds in chunks of whole --seed-batch groups, each chunk's captured activations and gradients within
    SEED_WORK_BYTES (estimated from the token counts), so their memory does not grow with the number of seeds."""
    k = ctx.cfg.seed_batch
    per_token = 4 * sum(d_in + d_out for d_in, d_out in ctx.dims.values())
    chunks, current, size = [], [], 0
    for start in range(0, len(ctx.seed_tok), k):
        group = list(range(start, min(start + k, len(ctx.seed_tok))))
        cost = per_token * sum(len(ctx.seed_tok[i].input_ids) for i in group)
        if current and size + cost > SEED_WORK_BYTES:
            chunks.append(current)
            current, size = [], 0
        current, size = current + group, size + cost
    return chunks + ([current] if current else [])


def index_projection(ctx: ScoreContext):
    """The run's index projection (gdig.engine.index), or None with --index-dim 0."""
    if ctx.cfg.index_dim == 0:
        return None
    cfg = ctx.cfg
    return make_projection(cfg.index_projection, ctx.dims, cfg.index_dim, cfg.random_state, ctx.device)


def seed_stage(ctx: ScoreContext, cur: Curvature, dampings: dict[str, float], status: Status):
    """Seed gradients, grouped by --seed-batch and preconditioned one (module, chunk) at a time; also each
    seed's loss and token count, and the ranks used. With several processes each does its share of the chunks
    (by tokens), then every chunk is broadcast from the rank that made it, so all hold every seed."""
    t0 = time.time()
    m, k = len(ctx.seed_tok), ctx.cfg.seed_batch
    n_columns = -(-m // k)
    ranks = seed_ranks(ctx, n_columns)
    builder = SeedBuilder(ctx.dims, n_columns, cur, dampings, ranks, ctx.device, index_projection(ctx))
    loss = torch.zeros(m, dtype=torch.float32, device=ctx.device)
    n_tok = torch.zeros(m, dtype=torch.int64, device=ctx.device)
    chunks = seed_chunks(ctx)
    owners = ctx.world.owners([sum(len(ctx.seed_tok[i].input_ids) for i in c) for c in chunks])
    mine = [c for c, owner in zip(chunks, owners, strict=True) if owner == ctx.world.rank]
    total = sum(len(c) for c in mine)
    status.update("seeds", 0, total, force=True)
    done = 0
    with GradientCapture(ctx.model, ctx.tracked) as capture:
        for chunk in mine:
            caps = []
            for batch in ctx.batches(ctx.seed_tok, by_length(ctx.seed_tok, chunk)):
                cap = capture.run(batch)
                caps.append(_detached(cap))
                loss[batch.index] = cap.loss.detach().float()
                n_tok[batch.index] = cap.n_target.to(torch.int64)
                done += len(batch.index)
                status.update("seeds", done, total)
            _add_chunk(ctx, builder, caps, chunk)
    if ctx.world.active:
        ctx.world.barrier("waiting for every rank's seeds", status.refresh)
        for chunk, owner in zip(chunks, owners, strict=True):
            rows, cols = slice(chunk[0], chunk[-1] + 1), slice(chunk[0] // k, chunk[-1] // k + 1)
            ctx.world.broadcast([loss[rows], n_tok[rows], *builder.column_views(cols)], owner, "sharing the seeds")
    ctx.timings["seeds"] = time.time() - t0
    rank = next(iter(ranks.values())) if len(set(ranks.values())) == 1 else None
    return builder.finish(), loss.cpu().numpy(), n_tok.cpu().numpy(), rank


def _add_chunk(ctx: ScoreContext, builder: SeedBuilder, caps: list[Captured], chunk: list[int]) -> None:
    """Each module's seed columns for one chunk of seeds, handed to the builder as their tokens (cheaper to
    precondition, see add_tokens); with no curvature, as grouped per-example gradients."""
    first, k = chunk[0], ctx.cfg.seed_batch
    for t in ctx.tracked:
        if builder.takes_tokens(t.name):
            a, g = _column_tokens(caps, t.name, first, len(chunk), k)
            builder.add_tokens(t.name, first // k, a, g)
            continue
        grads = torch.zeros(len(chunk), t.d_out, t.d_in, device=ctx.device)
        for cap in caps:
            idx = torch.tensor(cap.index, device=ctx.device) - first
            grads[idx] = per_example_gradient(cap.acts[t.name], cap.grads[t.name])
        grouped = group_seed_gradients({t.name: grads}, k)[t.name]
        builder.add(t.name, first // k, grouped)


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


def score_stage(ctx: ScoreContext, scorer: Scorer, sketcher: Sketcher, run_dir: Path, status: Status) -> None:
    """Stream candidates in chunks of --chunk-size; each complete chunk is one file, written atomically. The
    chunks are the same for any number of processes; those not yet written are shared among them by tokens."""
    t0 = time.time()
    order = by_length(ctx.cand_tok)
    chunks = [order[i : i + ctx.cfg.chunk_size] for i in range(0, len(order), ctx.cfg.chunk_size)]
    partial_dir(run_dir).mkdir(exist_ok=True)
    todo = [i for i in range(len(chunks)) if not chunk_path(run_dir, i).exists()]
    ctx.world.barrier("listing the chunks already scored", status.refresh)  # before any rank writes one
    mine = [todo[p] for p in ctx.world.mine([sum(len(ctx.cand_tok[j].input_ids) for j in chunks[i]) for i in todo])]
    waiting = set(todo)
    done = 0 if not ctx.world.is_main else sum(len(c) for i, c in enumerate(chunks) if i not in waiting)
    total = done + sum(len(chunks[i]) for i in mine)
    status.update("score", done, total, force=True)
    with GradientCapture(ctx.model, ctx.tracked) as capture:
        for i in mine:
            parts: list[dict[str, np.ndarray]] = []
            for batch in ctx.batches(ctx.cand_tok, chunks[i]):
                cap = ctx.captures.pop(tuple(batch.index), None) or capture.run(batch)
                parts.append(_score_batch(cap, scorer, sketcher, ctx.cfg.index_dtype))
                done += len(batch.index)
                status.update("score", done, total)
            write_chunk(run_dir, i, {k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
    ctx.captures.clear()
    ctx.timings["score"] = ctx.timings.get("score", 0.0) + time.time() - t0


def _score_batch(cap: Captured, scorer: Scorer, sketcher: Sketcher, index_dtype: str) -> dict[str, np.ndarray]:
    with torch.no_grad():
        scored = scorer(cap)
        sketch = sketcher(cap)
    out = {
        "index": np.asarray(cap.index, np.int64),
        "influence": scored.scores.float().cpu().numpy(),
        "sketch": sketch.float().cpu().numpy(),
        "loss": cap.loss.cpu().numpy().astype(np.float32),
        "n_tokens": cap.n_target.cpu().numpy().astype(np.int64),
    }
    if scored.self_influence is not None:
        out["self_influence"] = scored.self_influence.float().cpu().numpy()
    if scored.index is not None:
        rows = IndexRows.from_projected(scored.index, scored.self_influence, index_dtype)
        out |= {INDEX_ROWS: rows.rows, INDEX_PROJECTED_NORM: rows.projected_norm}
        if rows.scale is not None:
            out[INDEX_ROW_SCALE] = rows.scale
    return out


def umap_stage(run_dir: Path, random_state: int, status: Status) -> None:
    """The 2-D map of the sketches (umap.npy), its time added to config.json."""
    from gdig.pipeline.umap_map import ensure_umap

    status.update("umap", 0, 1, force=True)
    t0 = time.time()
    ensure_umap(run_dir, random_state)
    cfg = read_config(run_dir)
    if cfg is None:
        raise FileNotFoundError(f"{run_dir / CONFIG}: missing; the run has not finished")
    cfg["timings"]["umap"] = time.time() - t0
    write_config(run_dir, cfg)


def load_or_make_seeds(
    ctx: ScoreContext, cur: Curvature, dampings: dict[str, float], run_dir: Path, status: Status, fp: str
) -> tuple[SeedGradients, np.ndarray, np.ndarray, int | None]:
    """The preconditioned seeds, reused from partial/ when an earlier process of this run finished them."""
    from gdig.rundir.seeds import load_seed_gradients, load_seed_meta, save_seed_gradients, save_seed_meta, seeds_path

    path = seeds_path(run_dir)
    partial_dir(run_dir).mkdir(exist_ok=True)
    meta = load_seed_meta(run_dir)
    if meta is not None and read_fingerprint(path) == fp:  # metadata only, not the tensors
        seeds, _ = load_seed_gradients(path, ctx.device)
        return (seeds, *meta)
    seeds, seed_loss, seed_ntok, rank = seed_stage(ctx, cur, dampings, status)
    if ctx.world.is_main:
        save_seed_gradients(path, seeds, fp)
        save_seed_meta(run_dir, seed_loss, seed_ntok, rank)
    ctx.world.barrier("saving the seeds", status.refresh)
    seeds, _ = load_seed_gradients(path, ctx.device)  # same bytes as a resumed run
    return seeds, seed_loss, seed_ntok, rank


def adequacy_stage(ctx: ScoreContext, run_dir: Path, status: Status) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """The adequacy signals of every candidate (gdig.engine.adequacy) and why some have none, by rank 0 with the loaded
    model; kept in partial/ once complete, so a resumed run does not compute them again."""
    import json

    from gdig.atomic import save_npz_atomic
    from gdig.engine.adequacy import adequacy_signals

    path = partial_dir(run_dir) / "adequacy.npz"
    if path.exists():
        with np.load(path) as saved:
            return {k: saved[k] for k in saved.files if k != "reasons"}, json.loads(str(saved["reasons"]))
    data = ctx.cfg.data
    t0 = time.time()
    status.update("adequacy", 0, 3 * len(ctx.candidates), force=True)
    signals, reasons = adequacy_signals(
        ctx.model,
        ctx.tokenizer,
        ctx.candidates.examples,
        data.prompt_template,
        data.max_length,
        data.src_lang,
        data.trg_lang,
        ctx.cfg.batch_size,
        progress=lambda done, total: status.update("adequacy", done, total),
        token_budget=ctx.cfg.token_budget,
        padding_side=ctx.cfg.padding_side,
    )
    ctx.timings["adequacy"] = time.time() - t0
    signals = {k: v.astype(np.float32) for k, v in signals.items()}
    save_npz_atomic(path, reasons=np.array(json.dumps(reasons)), **signals)
    return signals, reasons
