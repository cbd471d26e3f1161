"""The stages of `gdig score` over one context: fit the curvature, precondition the seeds, score the candidates
in resumable chunks, map the sketches. The run directory's files are written through gdig.rundir."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from gdig.engine.curvature import Curvature
from gdig.engine.curvature_fit import fit_curvature
from gdig.engine.hooks import Captured
from gdig.engine.index import make_projection
from gdig.engine.index_scoring import IndexRows
from gdig.engine.influence import ScoredBatch, Scorer, needs_self_influence
from gdig.engine.memory import budget_mb, captures_fit, captures_reusable, usable_memory_mb
from gdig.engine.seeds import SeedGradients
from gdig.engine.sketch import Sketcher
from gdig.hessians import hessian
from gdig.hessians.base import EIGENVALUE_PASS
from gdig.pipeline.context import ScoreContext, by_length, factors_fingerprint, fit_subset, short_hash
from gdig.rundir.checkpoint import FitCheckpoint
from gdig.rundir.chunks import chunk_path, partial_dir, write_chunk
from gdig.rundir.factors import load_factors, save_factors
from gdig.rundir.index import INDEX_PROJECTED_NORM, INDEX_ROW_SCALE, INDEX_ROWS
from gdig.rundir.layout import CONFIG, FACTORS, read_config, read_fingerprint, write_config
from gdig.rundir.status import Status

if TYPE_CHECKING:  # the partitions call the stages
    from gdig.pipeline.partitions import PartSums


@dataclass
class StageResults:
    """What the fit, seed and score stages leave for the run's last files (rank 0's `mean` only)."""

    seeds: SeedGradients  # their self-influences and index rows are every module's
    seed_loss: np.ndarray
    seed_ntok: np.ndarray
    rank: int | None  # the seeds' rank, when one rank for every module
    dampings: dict[str, float]  # lambda per module
    factors: dict  # n_examples, n_tokens, kind of the fitted curvature
    mean: dict[str, torch.Tensor] = field(default_factory=dict)  # the mean seed direction per module


def factors_record(cur: Curvature) -> dict:
    """What config.json records of the fitted curvature."""
    return {"n_examples": cur.n_examples, "n_tokens": cur.n_tokens, "kind": cur.kind}


def fit_stage(ctx: ScoreContext, run_dir: Path, status: Status, sketcher: Sketcher | None = None) -> Curvature:
    """The run's curvature: reused from this run or another with the same fingerprint, or fitted (resumably,
    each process on its share of the fit set's batches; `sketcher`: fit_factors')."""
    if not hessian(ctx.cfg.hessian).passes:
        return Curvature(ctx.cfg.hessian)
    if reusable_factors(ctx, run_dir, status):
        return load_factors(run_dir / FACTORS, ctx.device)
    return fit_factors(ctx, run_dir / FACTORS, factors_fingerprint(ctx), partial_dir(run_dir), status, sketcher)


def reusable_factors(ctx: ScoreContext, run_dir: Path, status: Status) -> bool:
    """Whether the run's factors file holds factors of this fingerprint: its own (a resumed run), or another
    run's under the same folder, copied (a run on the same model, pool and curvature settings)."""
    path = run_dir / FACTORS
    fp = factors_fingerprint(ctx)
    if ctx.world.is_main and read_fingerprint(path) != fp:
        donor = _find_factors(run_dir.parent, fp, exclude=run_dir)
        if donor is not None:
            shutil.copyfile(donor, path)
    ctx.world.barrier("looking for reusable factors", status.refresh)
    reused = read_fingerprint(path) == fp
    if reused:
        ctx.timings["factors_reused"] = 1.0
    return reused


def fit_factors(
    ctx: ScoreContext, path: Path, fp: str, checkpoints: Path, status: Status, sketcher: Sketcher | None = None
) -> Curvature:
    """Fit the curvature of the modules this pass works on into `path` (with fingerprint `fp`; the fit's
    checkpoints in the folder `checkpoints`) and load it back. `sketcher`: the run's, when its scoring follows
    (see _keeps_rotations)."""
    fit_passes = hessian(ctx.cfg.hessian).passes
    fit_idx = fit_subset(len(ctx.cand_tok), ctx.cfg.fit_examples, ctx.cfg.random_state)
    order = by_length(ctx.cand_tok, fit_idx)
    batches = ctx.batch_indices(ctx.cand_tok, order)
    costs = [len(b) * max(len(ctx.cand_tok[i].input_ids) for i in b) for b in batches]  # padded tokens
    useful = captures_reusable(ctx.cfg.hessian, len(fit_idx), len(ctx.cand_tok))
    cache: dict[int, Captured] | None = {} if useful and _captures_fit(ctx, order) else None
    handed = cache is not None and len(fit_idx) == len(ctx.cand_tok) and not ctx.world.active  # to scoring
    keep_rotations = handed and sketcher is not None and _keeps_rotations(ctx)
    names = [t.name for t in ctx.work]

    def passes(stage: str, mine: list[int], covered: list[int]):
        t0 = time.time()
        done = sum(len(batches[b]) for b in covered)  # rank 0 reports the batches its checkpoint covers as done
        total = done + sum(len(batches[b]) for b in mine)
        status.update(stage, done, total, force=True)
        with ctx.capture() as capture:
            for b in mine:
                cap = cache.get(b) if cache is not None and stage != fit_passes[0] else None
                if cap is None:
                    cap = capture.run(ctx.collate(ctx.cand_tok, batches[b]))
                    if cache is not None and stage == fit_passes[0]:
                        cache[b] = detached(cap).compact()
                        cap.weight_grads = cache[b].weight_grads  # formed once: this pass may use them too
                elif keep_rotations and stage == EIGENVALUE_PASS and cap.rotations is None:
                    cap.sketch, cap.rotations = sketcher.parts(cap, names), {}  # the sketch before the gradients go
                yield b, cap
                del cap  # not held while the next batch is captured (the plan counts one batch)
                done += len(batches[b])
                status.update(stage, done, total)
        ctx.timings[stage] = ctx.timings.get(stage, 0.0) + time.time() - t0

    batching = [ctx.cfg.batch_size, ctx.cfg.token_budget]
    checkpoints.mkdir(parents=True, exist_ok=True)
    shared = shared_inputs(ctx, order[-1]) if hessian(ctx.cfg.hessian).eigendecomposes else {}
    sums = [fp, batching, "v2"] + ([shared] if shared else [])  # a checkpoint holds no A sum of a shared input
    checkpoint = FitCheckpoint(checkpoints, short_hash(sums), ctx.cfg.checkpoint_seconds, rank=ctx.world.rank)
    cur = fit_curvature(
        ctx.cfg.hessian, ctx.work_dims, passes, costs, ctx.device, checkpoint, ctx.world, status.refresh, shared
    )
    if ctx.world.is_main:
        save_factors(cur, path, fp)
    del cur  # reloaded below: never two copies of the factors
    ctx.world.barrier("saving the factors", status.refresh)
    checkpoint.discard(fit_passes)
    if cache and handed:  # scoring meets the same batches
        ctx.captures = {tuple(batches[b]): c for b, c in cache.items()}
    cache = None  # the captures go now, not when this returns: their memory is back before the seeds need it
    return load_factors(path, ctx.device)  # a fresh and a resumed run compute from the same bytes


def _keeps_rotations(ctx: ScoreContext) -> bool:
    """Whether the eigenvalue pass keeps each cached capture's rotation into the eigenbasis in place of its
    gradient (Captured.keep_rotation), with the sketch made from the gradient first: scoring, which meets the
    same captures, rotates every candidate (influence.needs_self_influence) and would repeat the product. The
    scores are the same bits as those of a capture made again, which scoring rotates by the same route."""
    return needs_self_influence(ctx.cfg.normalize, ctx.cfg.index_dim > 0)


def shared_inputs(ctx: ScoreContext, example: int) -> dict[str, str]:
    """The modules of this pass that read the same input tensor as an earlier one (Captured.same_input), seen on
    one example: their A factor is summed and eigendecomposed once."""
    with ctx.capture() as capture:
        return capture.run(ctx.collate(ctx.cand_tok, [example])).same_input


def _captures_fit(ctx: ScoreContext, order: list[int]) -> bool:
    """Whether every fit batch's kept capture fits in --fit-cache-mb (auto: a third of free memory, <= 8 GiB)."""
    budget = budget_mb(ctx.cfg.fit_cache_mb, usable_memory_mb(ctx.device, ctx.cfg.memory_gb), 3)
    dims = [(t.d_in, t.d_out) for t in ctx.work]
    lengths = [len(ctx.cand_tok[i].input_ids) for i in order]
    return captures_fit(lengths, dims, ctx.cfg.batch_size, ctx.cfg.token_budget is not None, budget)


def detached(cap: Captured) -> Captured:
    """The capture without its autograd graph (kept past its batch)."""
    acts = {k: v.detach() for k, v in cap.acts.items()}
    grads = {k: v.detach() for k, v in cap.grads.items()}
    weight_grads = {k: v.detach() for k, v in cap.weight_grads.items()}
    return Captured(
        cap.index, cap.loss.detach(), cap.n_target.detach(), cap.mask, acts, grads, weight_grads, cap.same_input
    )


def _find_factors(runs_root: Path, fingerprint: str, exclude: Path) -> Path | None:
    if not runs_root.is_dir():
        return None
    for cand in sorted(runs_root.glob(f"*/{FACTORS}")):
        if cand.parent.resolve() != exclude.resolve() and read_fingerprint(cand) == fingerprint:
            return cand
    return None


def dampings_for(ctx: ScoreContext, cur: Curvature) -> dict[str, float]:
    """lambda per tracked module: absolute, or relative to the module's mean eigenvalue."""
    return {t.name: cur.damping(t.name, ctx.cfg.damping, ctx.cfg.damping_relative) for t in ctx.work}


def index_projection(ctx: ScoreContext):
    """The run's index projection (gdig.engine.index), or None with --index-dim 0."""
    if ctx.cfg.index_dim == 0:
        return None
    cfg = ctx.cfg
    return make_projection(cfg.index_projection, ctx.dims, cfg.index_dim, cfg.random_state, ctx.device)


def score_stage(
    ctx: ScoreContext, scorer: Scorer, sketcher: Sketcher, run_dir: Path, status: Status, carry: PartSums | None = None
) -> None:
    """Stream candidates in chunks of --chunk-size; each complete chunk is one file, written atomically. The
    chunks are the same for any number of processes; those not yet written are shared among them by tokens.
    `carry`: the module group this pass scores (gdig.pipeline.partitions): its sums continue the last group's,
    and only the last group's pass writes the chunks."""
    t0 = time.time()
    order = by_length(ctx.cand_tok)
    chunks = [order[i : i + ctx.cfg.chunk_size] for i in range(0, len(order), ctx.cfg.chunk_size)]
    partial_dir(run_dir).mkdir(exist_ok=True)
    todo = [i for i in range(len(chunks)) if not chunk_path(run_dir, i).exists() and not (carry and carry.done(i))]
    ctx.world.barrier("listing the chunks already scored", status.refresh)  # before any rank writes one
    mine = [todo[p] for p in ctx.world.mine([sum(len(ctx.cand_tok[j].input_ids) for j in chunks[i]) for i in todo])]
    waiting = set(todo)
    done = 0 if not ctx.world.is_main else sum(len(c) for i, c in enumerate(chunks) if i not in waiting)
    total = done + sum(len(chunks[i]) for i in mine)
    status.update("score", done, total, force=True)
    names = [t.name for t in ctx.work]
    intermediate = carry is not None and not carry.last  # a group before the last: keeps its sums, writes no chunk
    with ctx.capture() as capture:
        for i in mine:
            parts: list[dict[str, np.ndarray]] = []
            before = carry.carried(i) if carry else None
            for group in kept_groups(ctx.batches(ctx.cand_tok, chunks[i]), ctx.captures):
                caps = [ctx.captures.pop(tuple(b.index), None) or capture.run(b) for b in group]
                carried = [before.next(c.index, c.loss.device) if before else (None, None) for c in caps]
                with torch.no_grad():
                    scored = scorer.raw_scores_of(caps, [c[0] for c in carried])
                    for cap, got, (_, sketch_before) in zip(caps, scored, carried, strict=True):
                        sketch = cap.sketch if cap.sketch is not None else sketcher.parts(cap, names)
                        sketch = sketch if sketch_before is None else torch.cat([sketch_before, sketch], dim=1)
                        if intermediate:
                            parts.append(carry.arrays(cap, got, sketch))
                        else:
                            parts.append(_score_batch(cap, scorer.normalised(got), sketcher.normed(sketch), ctx.cfg))
                        done += len(cap.index)
                        status.update("score", done, total)
                del caps, scored, carried, cap, got, sketch  # not held while the next batch is captured
            if intermediate:
                carry.save(i, {k: torch.cat([p[k] for p in parts]) for k in parts[0]})
            else:
                write_chunk(run_dir, i, {k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
    ctx.captures.clear()
    ctx.timings["score"] = ctx.timings.get("score", 0.0) + time.time() - t0


# kept captures scored module by module together (Scorer.raw_scores_of); their outputs, held together, are not in
# the plan (B (S + k) floats a batch: 4.5 MiB for 8 batches of 8 at the default index)
SCORED_TOGETHER = 8


def kept_groups(batches, kept: dict, size: int = SCORED_TOGETHER):
    """Consecutive batches in groups of up to `size` whose captures are kept (`kept`, by their examples), and
    each batch without one alone: its capture is made when it is scored, one at a time (the plan counts one)."""
    group = []
    for batch in batches:
        if tuple(batch.index) not in kept:
            if group:
                yield group
            yield [batch]
            group = []
            continue
        group.append(batch)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def _score_batch(cap: Captured, scored: ScoredBatch, sketch: torch.Tensor, cfg) -> dict[str, np.ndarray]:
    out = {
        "index": np.asarray(cap.index, np.int64),
        "influence": scored.scores.float().cpu().numpy(),
        "sketch": sketch.float().cpu().numpy(),
        "loss": cap.loss.detach().cpu().numpy().astype(np.float32),
        "n_tokens": cap.n_target.cpu().numpy().astype(np.int64),
    }
    if scored.self_influence is not None:
        out["self_influence"] = scored.self_influence.float().cpu().numpy()
    if scored.index is not None:
        rows = IndexRows.from_projected(scored.index, scored.self_influence, cfg.index_dtype)
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
