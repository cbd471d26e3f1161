"""`gdig score` as a function: build the context, run the stages into a run directory (DESIGN section 3), then
write the final files.

A run is killed at any point without harm: chunks are written whole (temporary file + rename), `--resume`
picks up after the last complete chunk, and the final files appear only when every chunk is in.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from gdig.atomic import atomic_path
from gdig.cancel import Cancelled
from gdig.config import ScoreConfig
from gdig.engine.distributed import World, join_world, leave_world
from gdig.engine.index_scoring import IndexRows
from gdig.engine.influence import Scorer
from gdig.engine.measure import resident_bytes
from gdig.engine.memory import local_processes, memory_for_plan, release_freed_memory
from gdig.engine.seeds import SeedGradients, mean_seed_direction
from gdig.engine.sketch import Sketcher
from gdig.hessians import hessian
from gdig.inputs.model_source import check_model_source, has_weights
from gdig.pipeline.context import ScoreContext, build_context, config_record, read_inputs, settings_fingerprint
from gdig.pipeline.index_run import index_meta, measure_agreement
from gdig.pipeline.partitions import group_label, resumed_groups, score_in_parts
from gdig.pipeline.seed_stage import load_or_make_seeds
from gdig.pipeline.sharding import least_groups
from gdig.pipeline.stages import (
    StageResults,
    adequacy_stage,
    dampings_for,
    factors_record,
    fit_stage,
    index_projection,
    score_stage,
    umap_stage,
)
from gdig.planning.disk import disk_shortfall
from gdig.planning.plan import Plan, plan_run
from gdig.planning.report import advice
from gdig.rundir.chunks import collect_chunks, remove_partial
from gdig.rundir.index import (
    INDEX_PROJECTED_NORM,
    INDEX_ROW_SCALE,
    INDEX_ROWS,
    write_index_meta,
    write_index_norms,
    write_index_seeds,
)
from gdig.rundir.layout import (
    INDEX,
    INFLUENCE,
    SEED_GRADS,
    SKETCH,
    UMAP,
    RunExistsError,
    prepare,
    read_config,
    write_config,
)
from gdig.rundir.lock import writer_lock
from gdig.rundir.seeds import save_mean_direction
from gdig.rundir.status import Status, clear_cancel
from gdig.rundir.tables import records_table, write_tables


def job_plan(cfg: ScoreConfig, n_candidates: int, n_seeds: int, n_modules: int | None = None) -> dict[str, float]:
    """Expected relative cost of each stage, in candidate forward+backward passes (for the overall ETA)."""
    n_fit = min(cfg.fit_examples or n_candidates, n_candidates)
    plan = {"load": 0.05 * n_candidates}
    parts = max(cfg.module_partitions, 1)
    for g in range(parts):  # each module group makes its own passes over the data
        group = group_label(g, parts)
        plan |= {stage + group: n_fit for stage in hessian(cfg.hessian).passes}
        plan |= {"seeds" + group: 1.5 * n_seeds, "score" + group: n_candidates}
    if cfg.adequacy:  # three forward passes of a candidate: about its forward and backward
        plan["adequacy"] = n_candidates
    plan["finalize"] = 0.02 * n_candidates
    if cfg.umap:
        plan["umap"] = 600 + 0.3 * n_candidates
    return plan


def make_plan(cfg: ScoreConfig, memory_gb: float | None = None, model=None, tokenizer=None, processes: int = 1) -> Plan:
    """The memory and time plan of `gdig score` with these settings (nothing is written): a short probe with
    the real model, or the meta device for a config-only folder. `memory_gb`: plan for that much memory (default: the
    device's, at most --memory-gb); `processes`: per process of a torchrun job of that many (--shard-factors)."""
    if processes < 1:
        raise ValueError(f"--plan-processes must be >= 1, got {processes}")
    least_groups(cfg.shard_factors, cfg.module_partitions, processes)
    import torch

    from gdig.inputs.model import resolve_device, resolve_dtype
    from gdig.planning.probe import meta_workload, workload_from_context

    if model is None and not has_weights(cfg.model):
        device = resolve_device("auto") if cfg.device == "auto" else torch.device(cfg.device)
        cuda_auto = device.type == "cuda" and cfg.dtype == "auto"  # bfloat16, as a run on a recent GPU
        dtype = torch.bfloat16 if cuda_auto else resolve_dtype(cfg.dtype, device)
        w, meta = meta_workload(cfg, cfg.model, dtype)
        plan = plan_run(cfg, w, memory_for_plan(device, memory_gb, cfg.memory_gb, processes), processes)
        plan.notes.append(f"{cfg.model} has no weights: built on the meta device in {dtype}, 4 characters per token")
        return plan
    if model is None:
        check_model_source(cfg.model, gguf_file=cfg.gguf_file)
    ctx = build_context(cfg, model, tokenizer)
    w = workload_from_context(ctx, runtime_bytes(ctx), probe=True)
    return plan_run(cfg, w, memory_for_plan(ctx.device, memory_gb, cfg.memory_gb, processes), processes)


def runtime_bytes(ctx: ScoreContext) -> int:
    """What the process holds besides the model once the context is loaded (interpreter, libraries, data); 0 on
    a GPU, whose memory holds only the model and the work."""
    from gdig.planning.probe import model_bytes

    return 0 if ctx.device.type == "cuda" else max(resident_bytes() - model_bytes(ctx.model), 0)


def check_memory(ctx: ScoreContext) -> None:
    """Refuse, before any stage runs, a job whose plan (without a probe) does not fit, naming the knobs; with
    --module-partitions 0, choose the module groups by the plan (every process the most any of them needs)."""
    from gdig.planning.probe import workload_from_context

    available = memory_for_plan(ctx.device, None, ctx.cfg.memory_gb, local_processes())
    workload = workload_from_context(ctx, runtime_bytes(ctx), probe=False)
    plan = plan_run(ctx.cfg, workload, available, ctx.world.size)
    ctx.cfg.module_partitions = -ctx.world.all_reduce_min(-plan.partitions, "agreeing on the module groups")
    if not plan.fits:
        stage, peak = plan.worst
        tips = "\n  ".join(advice(plan, ctx.cfg))
        raise MemoryPlanError(
            f"this run needs about {peak / 2**30:.1f} GiB at {stage} but {plan.available_bytes / 2**30:.1f} GiB is "
            f"available; nothing was computed. Options:\n  {tips}\n(`gdig score ... --plan` shows the whole plan; "
            "--no-memory-check runs anyway)"
        )
    short = disk_shortfall(plan.disk, ctx.cfg.out)
    if short:
        raise MemoryPlanError(short + " (--no-memory-check runs anyway)")


class MemoryPlanError(ValueError):
    """A run that would not fit in memory, said before it starts."""


def score(
    cfg: ScoreConfig,
    resume: bool = False,
    model=None,
    tokenizer=None,
    on_progress: Callable[[dict], None] | None = None,
    status: Status | None = None,
    memory_check: bool = True,
) -> Path:
    """Run every stage of `gdig score` into cfg.out; returns the run directory. A caller with a longer job (the
    demo) passes its own `status`, whose plan already holds these stages."""
    if model is None:
        # before anything is written: a wrong path is not a failed run
        check_model_source(cfg.model, gguf_file=cfg.gguf_file)
    inputs = read_inputs(cfg)  # a bad file is reported before the model loads and leaves no run folder
    world, device = join_world(cfg.device)
    least = least_groups(cfg.shard_factors, cfg.module_partitions, world.size)  # a wrong count fails here
    cfg = dataclasses.replace(cfg, device=device)
    run_dir = Path(cfg.out)
    lock = ExitStack()  # rank 0 holds the run's writer lock until the job ends
    saved = _prepare(run_dir, resume, world, lock)
    own_status = status is None
    status = status or Status(run_dir, on_progress, world)
    try:
        status.update("load", 0, 1, force=True)
        t0 = time.time()
        ctx = build_context(cfg, model, tokenizer, world, inputs)
        ctx.timings["load"] = time.time() - t0
        ctx.cfg.module_partitions = resumed_groups(ctx.cfg.module_partitions, saved, least)
        if memory_check:
            check_memory(ctx)
        ctx.cfg.module_partitions = ctx.cfg.module_partitions or least  # auto without a plan: the fewest
        if own_status:
            status.set_plan(job_plan(cfg, len(ctx.candidates), len(ctx.seeds), len(ctx.tracked)))
        if saved is None or not _resume_finished(ctx, run_dir, saved, status):
            if world.is_main:
                write_config(run_dir, config_record(ctx, {"finished": False, "world_size": world.size}))
            _run_stages(ctx, run_dir, status)
        if own_status and world.is_main:
            status.update("done", 1, 1, force=True)
        return run_dir
    except BaseException as e:
        if own_status:
            status.fail("cancelled" if isinstance(e, Cancelled | KeyboardInterrupt) else f"{type(e).__name__}: {e}")
        raise
    finally:
        lock.close()
        leave_world()


def _prepare(run_dir: Path, resume: bool, world: World, lock: ExitStack) -> dict[str, Any] | None:
    """Rank 0 takes the run's writer lock (refused, naming the job, while another job writes the run), then checks
    and creates the run directory (the others wait): the saved config when resuming."""
    saved = None
    if world.is_main:
        try:
            existed = run_dir.is_dir()
            if existed:  # before prepare's own checks: a running job is the reason to name
                lock.enter_context(writer_lock(run_dir))
            saved = prepare(run_dir, resume)
            if not existed:
                lock.enter_context(writer_lock(run_dir))
            if resume:
                clear_cancel(run_dir)  # a Cancel that stopped the last job (the app's, or Ctrl-C) is not this one's
        except BaseException:
            lock.close()
            raise
    world.barrier("preparing the run directory")
    return saved if world.is_main else (read_config(run_dir) if resume else None)


def _resume_finished(ctx: ScoreContext, run_dir: Path, saved: dict[str, Any], status: Status) -> bool:
    """Check that a resumed run has the same settings; True when it had finished (only its map may be missing).
    A run begun before the index existed is finished without one (`gdig index` adds it after)."""
    if "index_dim" not in saved.get("settings", {}):
        ctx.cfg.index_dim = 0
    if saved.get("fingerprints", {}).get("settings") != settings_fingerprint(ctx):
        raise RunExistsError(f"{run_dir} was made with other settings, model or data; --resume needs the same")
    if saved.get("finished"):
        if ctx.cfg.umap and ctx.world.is_main and not (run_dir / UMAP).exists():
            umap_stage(run_dir, ctx.cfg.random_state, status)
        return True
    ctx.timings = {k: v for k, v in saved.get("timings", {}).items() if k != "factors_reused"}
    return False


def _run_stages(ctx: ScoreContext, run_dir: Path, status: Status) -> None:
    fp = settings_fingerprint(ctx)
    sketcher = Sketcher(ctx.dims, ctx.cfg.sketch_dim, ctx.cfg.random_state, ctx.device)
    if ctx.cfg.module_partitions > 1:
        done = score_in_parts(ctx, run_dir, status, fp, sketcher)
    else:
        done = _score_whole(ctx, run_dir, status, fp, sketcher)
    if not ctx.world.is_main:
        return
    seeds = done.seeds
    save_mean_direction(run_dir / SEED_GRADS, done.mean, seeds, ctx.cfg.normalize, fp)
    extra = {
        "module_damping": done.dampings,
        "seed_rank_kept": done.rank,
        "seed_lowrank_error": seeds.lowrank_error,
        "n_seed_columns": seeds.n_seeds,
        "sketch_dim": sketcher.dim,
        "factors": done.factors,
        "world_size": ctx.world.size,
        "collective_bytes": dict(ctx.world.traffic),  # the tensors' sizes, by purpose (rank 0's view)
    }
    adequacy: dict[str, np.ndarray] = {}
    if ctx.cfg.adequacy:
        adequacy, missing = adequacy_stage(ctx, run_dir, status)
        extra["adequacy_missing"] = missing  # why some candidates have no adequacy signal -> how many
    status.update("finalize", 0, 1, force=True)
    finalize(ctx, run_dir, done.seed_loss, done.seed_ntok, extra, seeds, adequacy)
    if ctx.cfg.umap:
        umap_stage(run_dir, ctx.cfg.random_state, status)


def _score_whole(ctx: ScoreContext, run_dir: Path, status: Status, fp: str, sketcher: Sketcher) -> StageResults:
    """The fit, the seeds and the scores over every tracked module at once."""
    cur = fit_stage(ctx, run_dir, status, sketcher)
    release_freed_memory()  # each stage's peak is its own, not the earlier stages' freed blocks
    dampings = dampings_for(ctx, cur)
    seeds, seed_loss, seed_ntok, rank = load_or_make_seeds(ctx, cur, dampings, run_dir, status, fp)
    release_freed_memory()
    modules = [t.name for t in ctx.tracked]
    scorer = Scorer(seeds, cur, dampings, ctx.cfg.normalize, index_projection(ctx), modules)
    score_stage(ctx, scorer, sketcher, run_dir, status)
    release_freed_memory()
    ctx.world.barrier("waiting for every rank's scores", status.refresh)
    factors = factors_record(cur)
    mean = mean_seed_direction(seeds, ctx.cfg.normalize, cur) if ctx.world.is_main else {}
    return StageResults(seeds, seed_loss, seed_ntok, rank, dampings, factors, mean)


def _streamed(seeds: SeedGradients) -> dict[str, str]:
    """The chunk arrays written straight to their files, by chunk key."""
    files = {"influence": INFLUENCE, "sketch": SKETCH}
    return files | ({INDEX_ROWS: INDEX} if seeds.index is not None else {})


def write_run_index(ctx: ScoreContext, run_dir: Path, merged: dict[str, np.ndarray], seeds: SeedGradients) -> dict:
    """The index's norms and seed rows beside index.npy, its agreement with the exact scores just written, and
    index.json last; returns what config.json records of it."""
    norm = np.sqrt(np.clip(merged["self_influence"].astype(np.float64), 0, None))
    write_index_norms(run_dir, merged.pop(INDEX_PROJECTED_NORM), norm, merged.pop(INDEX_ROW_SCALE, None))
    write_index_seeds(run_dir, IndexRows.from_projected(seeds.index, seeds.self_influence))
    projection = index_projection(ctx)
    meta = index_meta(projection, ctx.cfg, ctx.tracked)
    write_index_meta(run_dir, meta)  # complete; the agreement is measured from the files, then recorded
    meta["agreement"] = measure_agreement(run_dir, ctx.cfg.normalize)
    write_index_meta(run_dir, meta)
    return {k: meta[k] for k in ("k", "dtype", "agreement")}


def signals_of(dataset, data) -> dict[str, np.ndarray]:
    """The signals beside influence stored per candidate (gdig.selection.signals): from each record's source and target
    texts and declared languages (the file's, else --src-lang / --trg-lang)."""
    from gdig.selection.signals import candidate_signals

    recs = [e.record for e in dataset.examples]
    src = [str(r.get("src_text") or r.get("input") or e.prompt) for r, e in zip(recs, dataset.examples, strict=True)]
    tgt = [e.target for e in dataset.examples]
    src_langs = [r.get("src_lang") or data.src_lang for r in recs]
    trg_langs = [r.get("trg_lang") or data.trg_lang for r in recs]
    return candidate_signals(src, tgt, src_langs, trg_langs)


def finalize(
    ctx: ScoreContext, run_dir: Path, seed_loss, seed_ntok, extra: dict[str, Any], seeds: SeedGradients, adequacy
) -> None:
    """Assemble the chunks into the final files (the matrices streamed to disk, never whole in memory), the
    index's last, with the candidates' signals (`adequacy`: those columns when asked for); config.json says
    `finished` last, then partial/ goes."""
    t0 = time.time()
    with ExitStack() as stack:
        streams = {key: stack.enter_context(atomic_path(run_dir / name)) for key, name in _streamed(seeds).items()}
        merged = collect_chunks(run_dir, len(ctx.candidates), streams)
    if seeds.index is not None:
        t_index = time.time()
        extra = extra | {"index": write_run_index(ctx, run_dir, merged, seeds)}
        ctx.timings["index_finalize"] = time.time() - t_index
    cand_cols = {"loss": merged["loss"], "n_tokens": merged["n_tokens"]}
    if "self_influence" in merged:
        cand_cols["self_influence"] = merged["self_influence"]
    t_signals = time.time()
    cand_cols |= signals_of(ctx.candidates, ctx.cfg.data) | adequacy
    ctx.timings["signals"] = time.time() - t_signals
    seed_batch = np.arange(len(ctx.seeds), dtype=np.int64) // ctx.cfg.seed_batch
    seed_cols = {"loss": seed_loss, "n_tokens": seed_ntok, "seed_batch": seed_batch}
    candidates = records_table(ctx.candidates, ctx.cand_tok, cand_cols)
    seeds = records_table(ctx.seeds, ctx.seed_tok, seed_cols)
    write_tables(run_dir, candidates, seeds)
    ctx.timings["finalize"] = time.time() - t0
    write_config(run_dir, config_record(ctx, extra | {"finished": True}))
    remove_partial(run_dir)
