"""The `score` stages over a run directory (DESIGN section 3): fit curvature, precondition seeds, score
candidates in resumable chunks, then write the final files atomically.

A run is killed at any point without harm: chunks are written whole (temporary file + rename), `--resume`
picks up after the last complete chunk, and the final files appear only when every chunk is in.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gdig.atomic import atomic_path, save_npy_atomic, save_npz_atomic, write_json_atomic
from gdig.config import ScoreConfig
from gdig.curvature import Curvature, FitCheckpoint, fit_curvature
from gdig.data import Dataset, TokenizationReport, TokenizedExample, load_dataset, tokenize_dataset
from gdig.hooks import Captured, GradientCapture, make_batches, per_example_gradient
from gdig.influence import Scorer, SeedGradients, group_seed_gradients, precondition_seeds
from gdig.model import TrackedModule, find_tracked_modules, load_model, model_fingerprint, prepare_tokenizer
from gdig.model_source import check_model_source
from gdig.sketch import Sketcher
from gdig.status import Cancelled, Status, read_status  # noqa: F401 - read_status re-exported

PARTIAL = "partial"
DENSE_SEED_LIMIT_BYTES = 4 << 30  # above this, seeds are kept at low rank unless --seed-rank says otherwise
AUTO_SEED_RANK = 64


class RunExistsError(ValueError):
    pass


# ---------------------------------------------------------------------------------------------------------------
# Context: model, data, tracked modules


@dataclass
class ScoreContext:
    cfg: ScoreConfig
    model: Any
    tokenizer: Any
    tracked: list[TrackedModule]
    device: torch.device
    candidates: Dataset
    seeds: Dataset
    cand_tok: list[TokenizedExample]
    seed_tok: list[TokenizedExample]
    reports: dict[str, TokenizationReport]
    fingerprints: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)
    captures: dict[tuple[int, ...], Captured] = field(default_factory=dict)  # the fit pass's, kept for scoring

    @property
    def dims(self) -> dict[str, tuple[int, int]]:
        return {t.name: (t.d_in, t.d_out) for t in self.tracked}

    def batches(self, toks: list[TokenizedExample], order: list[int]):
        cfg = self.cfg
        return make_batches(
            toks, order, self.tokenizer.pad_token_id, cfg.batch_size, cfg.token_budget, cfg.padding_side
        )


def by_length(toks: list[TokenizedExample], subset: list[int] | None = None) -> list[int]:
    """Indices sorted by length (longest first, stable): less padding, and memory peaks show up at once."""
    idx = list(range(len(toks))) if subset is None else list(subset)
    return sorted(idx, key=lambda i: -len(toks[i].input_ids))


def build_context(cfg: ScoreConfig, model=None, tokenizer=None) -> ScoreContext:
    if model is None:
        model, tokenizer = load_model(cfg.model, cfg.device, cfg.dtype, cfg.trust_remote_code)
    else:
        prepare_tokenizer(tokenizer, model.get_input_embeddings().num_embeddings)
    model.eval()
    tracked = find_tracked_modules(model, cfg.modules)
    d = cfg.data
    candidates = load_dataset(cfg.candidates, d.prompt_template, d.src_lang, d.trg_lang, role="candidate")
    seeds = load_dataset(cfg.seeds, d.prompt_template, d.src_lang, d.trg_lang, role="seed")
    cand_tok, cand_rep = tokenize_dataset(tokenizer, candidates, d.max_length)
    seed_tok, seed_rep = tokenize_dataset(tokenizer, seeds, d.max_length)
    fps = {"model": model_fingerprint(model), "candidates": candidates.fingerprint, "seeds": seeds.fingerprint}
    device = next(model.parameters()).device
    return ScoreContext(cfg, model, tokenizer, tracked, device, candidates, seeds, cand_tok, seed_tok,
                        {"candidates": cand_rep, "seeds": seed_rep}, fps)  # fmt: skip


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def factors_fingerprint(ctx: ScoreContext) -> str:
    return _hash([ctx.fingerprints["model"], ctx.fingerprints["candidates"], ctx.cfg.curvature_settings()])


def settings_fingerprint(ctx: ScoreContext) -> str:
    settings = ctx.cfg.to_dict()
    for volatile in ("out", "device", "model", "candidates", "seeds", "umap", "checkpoint_seconds"):
        settings.pop(volatile)
    return _hash([ctx.fingerprints, settings])


# ---------------------------------------------------------------------------------------------------------------
# Stages


def fit_stage(ctx: ScoreContext, run_dir: Path, status: Status) -> Curvature:
    path = run_dir / "factors.safetensors"
    fp = factors_fingerprint(ctx)
    if ctx.cfg.hessian == "identity":
        return Curvature("identity")
    if Curvature.read_fingerprint(path) != fp:
        donor = _find_factors(run_dir.parent, fp, exclude=run_dir)
        if donor is not None:
            shutil.copyfile(donor, path)
    if Curvature.read_fingerprint(path) == fp:
        ctx.timings["factors_reused"] = 1.0
        return Curvature.load(path, ctx.device)
    fit_idx = list(range(len(ctx.cand_tok)))
    if ctx.cfg.fit_examples is not None and ctx.cfg.fit_examples < len(fit_idx):
        rng = np.random.default_rng(ctx.cfg.random_state)
        fit_idx = sorted(rng.choice(len(fit_idx), ctx.cfg.fit_examples, replace=False).tolist())
    order = by_length(ctx.cand_tok, fit_idx)
    useful = ctx.cfg.hessian == "ekfac" or len(fit_idx) == len(ctx.cand_tok)  # a second pass, or scoring, reuses it
    cache: list[Captured] | None = [] if useful and _fits_in_cache(ctx, order) else None

    def passes(stage: str, skip: int):
        nonlocal cache
        t0 = time.time()
        batches = iter(ctx.batches(ctx.cand_tok, order))
        done = sum(len(b.index) for b in itertools.islice(batches, skip))  # covered by the checkpoint
        if skip and stage == "fit_covariance":
            cache = None  # resumed: the skipped batches were never captured here
        status.update(stage, done, len(order), force=True)
        if stage == "fit_eigen" and cache:  # the same batches as the first pass: reuse its captures
            for cap in cache[skip:]:
                yield cap
                done += len(cap.index)
                status.update(stage, done, len(order))
        else:
            with GradientCapture(ctx.model, ctx.tracked) as capture:
                for batch in batches:
                    cap = capture.run(batch)
                    if cache is not None and stage == "fit_covariance":
                        cache.append(_detached(cap))
                    yield cap
                    done += len(batch.index)
                    status.update(stage, done, len(order))
        ctx.timings[stage] = ctx.timings.get(stage, 0.0) + time.time() - t0

    batching = [ctx.cfg.batch_size, ctx.cfg.token_budget]
    checkpoint = FitCheckpoint(run_dir / PARTIAL, _hash([fp, batching]), ctx.cfg.checkpoint_seconds)
    fit_curvature(ctx.cfg.hessian, ctx.dims, passes, ctx.device, checkpoint).save(path, fp)
    if cache and len(fit_idx) == len(ctx.cand_tok):  # scoring meets the same batches: reuse, don't recompute
        ctx.captures = {tuple(c.index): c for c in cache}
    return Curvature.load(path, ctx.device)  # a fresh and a resumed run compute from the same bytes


def _fits_in_cache(ctx: ScoreContext, order: list[int]) -> bool:
    """Whether every fit batch's captured a and g fit in --fit-cache-mb (estimated from the padded lengths)."""
    budget_mb = ctx.cfg.fit_cache_mb
    if budget_mb is None:
        budget_mb = min(8192, free_memory_mb(ctx.device) // 3)
    per_token = 4 * sum(t.d_in + t.d_out for t in ctx.tracked)
    lengths = [len(ctx.cand_tok[i].input_ids) for i in order]
    step = ctx.cfg.batch_size if ctx.cfg.token_budget is None else 1
    padded = sum(max(lengths[i : i + step]) * len(lengths[i : i + step]) for i in range(0, len(lengths), step))
    return 1.1 * padded * per_token <= budget_mb * 2**20


def free_memory_mb(device: torch.device) -> int:
    """Memory that can be used without swapping (MemAvailable on Linux), in MiB."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0] // 2**20)
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) // 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2**20)
    except (ValueError, OSError, AttributeError):
        return 0


def _detached(cap: Captured) -> Captured:
    acts = {k: v.detach() for k, v in cap.acts.items()}
    grads = {k: v.detach() for k, v in cap.grads.items()}
    return Captured(cap.index, cap.loss.detach(), cap.n_target.detach(), cap.mask, acts, grads)


def _find_factors(runs_root: Path, fingerprint: str, exclude: Path) -> Path | None:
    if not runs_root.is_dir():
        return None
    for cand in sorted(runs_root.glob("*/factors.safetensors")):
        if cand.parent.resolve() != exclude.resolve() and Curvature.read_fingerprint(cand) == fingerprint:
            return cand
    return None


def dampings_for(ctx: ScoreContext, cur: Curvature) -> dict[str, float]:
    return {t.name: cur.damping(t.name, ctx.cfg.damping, ctx.cfg.damping_relative) for t in ctx.tracked}


def seed_stage(ctx: ScoreContext, cur: Curvature, dampings: dict[str, float], status: Status):
    """Seed gradients, grouped by --seed-batch and preconditioned; also each seed's loss and token count."""
    t0 = time.time()
    m = len(ctx.seed_tok)
    grads = {t.name: torch.zeros(m, t.d_out, t.d_in, device=ctx.device) for t in ctx.tracked}
    loss, n_tok = np.zeros(m, np.float32), np.zeros(m, np.int64)
    status.update("seeds", 0, m, force=True)
    done = 0
    with GradientCapture(ctx.model, ctx.tracked) as capture:
        for batch in ctx.batches(ctx.seed_tok, by_length(ctx.seed_tok)):
            cap = capture.run(batch)
            idx = torch.tensor(batch.index, device=ctx.device)
            for name in grads:
                grads[name][idx] = per_example_gradient(cap.acts[name], cap.grads[name])
            loss[batch.index] = cap.loss.cpu().numpy()
            n_tok[batch.index] = cap.n_target.cpu().numpy()
            done += len(batch.index)
            status.update("seeds", done, m)
    grouped = group_seed_gradients(grads, ctx.cfg.seed_batch)
    rank = ctx.cfg.seed_rank
    dense_bytes = 4 * sum(g.numel() for g in grouped.values())
    if rank is None and dense_bytes > DENSE_SEED_LIMIT_BYTES:
        rank = AUTO_SEED_RANK
    seeds = precondition_seeds(grouped, cur, dampings, rank)
    ctx.timings["seeds"] = time.time() - t0
    return seeds, loss, n_tok, rank


def _chunk_path(run_dir: Path, i: int) -> Path:
    return run_dir / PARTIAL / f"chunk_{i:05d}.npz"


def score_stage(ctx: ScoreContext, scorer: Scorer, sketcher: Sketcher, run_dir: Path, status: Status) -> None:
    """Stream candidates in chunks of --chunk-size; each complete chunk is one file, written atomically."""
    t0 = time.time()
    order = by_length(ctx.cand_tok)
    chunks = [order[i : i + ctx.cfg.chunk_size] for i in range(0, len(order), ctx.cfg.chunk_size)]
    (run_dir / PARTIAL).mkdir(exist_ok=True)
    done = sum(len(c) for i, c in enumerate(chunks) if _chunk_path(run_dir, i).exists())
    status.update("score", done, len(order), force=True)
    with GradientCapture(ctx.model, ctx.tracked) as capture:
        for i, chunk in enumerate(chunks):
            if _chunk_path(run_dir, i).exists():
                continue
            parts: list[dict[str, np.ndarray]] = []
            for batch in ctx.batches(ctx.cand_tok, chunk):
                cap = ctx.captures.pop(tuple(batch.index), None) or capture.run(batch)
                parts.append(_score_batch(cap, scorer, sketcher))
                done += len(batch.index)
                status.update("score", done, len(order))
            arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            save_npz_atomic(_chunk_path(run_dir, i), **arrays)
    ctx.captures.clear()
    ctx.timings["score"] = ctx.timings.get("score", 0.0) + time.time() - t0


def _score_batch(cap: Captured, scorer: Scorer, sketcher: Sketcher) -> dict[str, np.ndarray]:
    with torch.no_grad():
        scores, self_inf = scorer(cap)
        sketch = sketcher(cap)
    out = {
        "index": np.asarray(cap.index, np.int64),
        "influence": scores.float().cpu().numpy(),
        "sketch": sketch.float().cpu().numpy(),
        "loss": cap.loss.cpu().numpy().astype(np.float32),
        "n_tokens": cap.n_target.cpu().numpy().astype(np.int64),
    }
    if self_inf is not None:
        out["self_influence"] = self_inf.float().cpu().numpy()
    return out


def collect_chunks(run_dir: Path, n: int) -> dict[str, np.ndarray]:
    files = sorted((run_dir / PARTIAL).glob("chunk_*.npz"))
    merged: dict[str, np.ndarray] = {}
    seen = np.zeros(n, bool)
    for f in files:
        with np.load(f, allow_pickle=False) as z:
            idx = z["index"]
            for key in z.files:
                if key == "index":
                    continue
                arr = z[key]
                if key not in merged:
                    merged[key] = np.zeros((n, *arr.shape[1:]), arr.dtype)
                merged[key][idx] = arr
            seen[idx] = True
    if not seen.all():
        raise RuntimeError(f"{int((~seen).sum())} candidates have no score; the run is incomplete")
    return merged


# ---------------------------------------------------------------------------------------------------------------
# Seed gradients on disk (reused on resume, and for token-level explanations)


def save_seed_gradients(path: Path, seeds: SeedGradients, fingerprint: str) -> None:
    from safetensors.torch import save_file

    tensors = {f"dense::{k}": v.contiguous().cpu() for k, v in seeds.dense.items()}
    tensors |= {f"left::{k}": v.contiguous().cpu() for k, v in seeds.left.items()}
    tensors |= {f"right::{k}": v.contiguous().cpu() for k, v in seeds.right.items()}
    tensors["self_influence"] = seeds.self_influence.contiguous().cpu()
    meta = {"fingerprint": fingerprint, "lowrank_error": json.dumps(seeds.lowrank_error)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def save_mean_seed_direction(path: Path, seeds: SeedGradients, normalize: str, fingerprint: str) -> None:
    """What token explanations keep of the seeds: per module the mean over seed columns of V_s (divided by the
    seed's norm under unit normalisation, so its contraction is the mean score), and each column's
    self-influence. One seed's worth of bytes instead of all seeds: a single column is recomputed on demand."""
    from safetensors.torch import save_file

    self_inf = seeds.self_influence.double()
    weight = self_inf.clamp(min=0).sqrt().reciprocal() if normalize == "unit" else torch.ones_like(self_inf)
    weight = torch.where(torch.isfinite(weight), weight, torch.zeros_like(weight)) / seeds.n_seeds
    tensors = {}
    for name in seeds.names:
        w = weight.to(device=seeds.self_influence.device, dtype=torch.float32)
        if name in seeds.dense:
            mean = torch.einsum("soi,s->oi", seeds.dense[name], w)
        else:
            mean = torch.einsum("sor,sir,s->oi", seeds.left[name], seeds.right[name], w)
        tensors[f"mean::{name}"] = mean.contiguous().cpu()
    tensors["self_influence"] = seeds.self_influence.contiguous().cpu()
    meta = {"fingerprint": fingerprint, "normalize": normalize, "lowrank_error": json.dumps(seeds.lowrank_error)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_seed_gradients(path: Path, device: torch.device | str = "cpu") -> tuple[SeedGradients, str | None]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    t = load_file(str(path), device=str(device))
    seeds = SeedGradients(self_influence=t.pop("self_influence"), lowrank_error=json.loads(meta["lowrank_error"]))
    for key, v in t.items():
        kind, name = key.split("::", 1)
        getattr(seeds, kind)[name] = v
    return seeds, meta.get("fingerprint")


# ---------------------------------------------------------------------------------------------------------------
# Run directory


def prepare_run_dir(run_dir: Path, resume: bool) -> dict[str, Any] | None:
    """Refuse to touch a finished or foreign run unless resuming; return the saved config when resuming."""
    cfg_path = run_dir / "config.json"
    if run_dir.exists() and not run_dir.is_dir():
        raise RunExistsError(f"{run_dir} exists and is not a folder")
    if cfg_path.exists():
        if not resume:
            raise RunExistsError(
                f"{run_dir} already holds a run; pass --resume to continue it, or choose another --out"
            )
        return json.loads(cfg_path.read_text())
    bookkeeping = {"job.json", "job-settings.json", "worker.log", "cancel", "status.json"}  # written before we start
    if run_dir.exists() and any(p.name not in bookkeeping for p in run_dir.iterdir()) and not resume:
        raise RunExistsError(f"{run_dir} is not empty; choose a new folder for --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    return None


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("gdig-studio", "torch", "transformers", "numpy", "safetensors", "scikit-learn", "umap-learn"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    return out


def _config_record(ctx: ScoreContext, extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "settings": ctx.cfg.to_dict(),
        "fingerprints": ctx.fingerprints | {"settings": settings_fingerprint(ctx)},
        "versions": _versions(),
        "device": str(ctx.device),
        "dtype": str(next(ctx.model.parameters()).dtype),
        "modules": [{"name": t.name, "d_in": t.d_in, "d_out": t.d_out, "conv1d": t.transposed} for t in ctx.tracked],
        "n_candidates": len(ctx.candidates),
        "n_seeds": len(ctx.seeds),
        "tokenization": {k: vars(r) | {"summary": r.summary()} for k, r in ctx.reports.items()},
        "timings": ctx.timings,
    } | extra


def _records_table(ds: Dataset, tok: list[TokenizedExample], columns: dict[str, np.ndarray]):
    import pyarrow as pa

    base = {"id": [e.id for e in ds.examples]} | {k: v for k, v in columns.items()}
    base |= {
        "n_input_tokens": np.array([len(t.input_ids) for t in tok], np.int64),
        "truncated": np.array([t.truncated for t in tok]),
        "prompt": [e.prompt for e in ds.examples],
        "target": [e.target for e in ds.examples],
        "record": [json.dumps(e.record, ensure_ascii=False, default=str) for e in ds.examples],
    }
    table = pa.table(base)
    fields = [k for k in dict.fromkeys(k for e in ds.examples for k in e.record) if k not in base]
    try:  # the input fields as columns, where Arrow can type them; `record` keeps every record exactly
        extra = pa.Table.from_pylist([{k: e.record.get(k) for k in fields} for e in ds.examples])
        for name in extra.column_names:
            table = table.append_column(name, extra.column(name))
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
        pass
    return table


def finalize(ctx: ScoreContext, run_dir: Path, seed_loss, seed_ntok, extra: dict[str, Any]) -> None:
    t0 = time.time()
    merged = collect_chunks(run_dir, len(ctx.candidates))
    cand_cols = {"loss": merged["loss"], "n_tokens": merged["n_tokens"]}
    if "self_influence" in merged:
        cand_cols["self_influence"] = merged["self_influence"]
    seed_cols = {"loss": seed_loss, "n_tokens": seed_ntok,
                 "seed_batch": np.arange(len(ctx.seeds), dtype=np.int64) // ctx.cfg.seed_batch}  # fmt: skip
    import pyarrow.parquet as pq

    for name, table in (("candidates", _records_table(ctx.candidates, ctx.cand_tok, cand_cols)),
                        ("seeds", _records_table(ctx.seeds, ctx.seed_tok, seed_cols))):  # fmt: skip
        with atomic_path(run_dir / f"{name}.parquet") as tmp:
            pq.write_table(table, tmp)
    save_npy_atomic(run_dir / "sketch.npy", merged["sketch"].astype(np.float32))
    save_npy_atomic(run_dir / "influence.npy", merged["influence"].astype(np.float32))
    ctx.timings["finalize"] = time.time() - t0
    write_json_atomic(run_dir / "config.json", _config_record(ctx, extra | {"finished": True}))
    shutil.rmtree(run_dir / PARTIAL, ignore_errors=True)


def umap_stage(run_dir: Path, random_state: int, status: Status) -> None:
    from gdig.umap_map import ensure_umap

    status.update("umap", 0, 1, force=True)
    t0 = time.time()
    ensure_umap(run_dir, random_state)
    cfg = json.loads((run_dir / "config.json").read_text())
    cfg["timings"]["umap"] = time.time() - t0
    write_json_atomic(run_dir / "config.json", cfg)


def job_plan(cfg: ScoreConfig, n_candidates: int, n_seeds: int) -> dict[str, float]:
    """Expected relative cost of each stage, in candidate forward+backward passes (for the overall ETA)."""
    n_fit = min(cfg.fit_examples or n_candidates, n_candidates)
    plan = {"load": 0.05 * n_candidates}
    if cfg.hessian != "identity":
        plan["fit_covariance"] = n_fit
    if cfg.hessian == "ekfac":
        plan["fit_eigen"] = n_fit
    plan |= {"seeds": 1.5 * n_seeds, "score": n_candidates, "finalize": 0.02 * n_candidates}
    if cfg.umap:
        plan["umap"] = 600 + 0.3 * n_candidates
    return plan


def score(
    cfg: ScoreConfig,
    resume: bool = False,
    model=None,
    tokenizer=None,
    on_progress: Callable[[dict], None] | None = None,
    status: Status | None = None,
) -> Path:
    """Run every stage of `gdig score` into cfg.out; returns the run directory. A caller with a longer job (the
    demo) passes its own `status`, whose plan already holds these stages."""
    if model is None:
        check_model_source(cfg.model)  # before anything is written: a wrong path is not a failed run
    run_dir = Path(cfg.out)
    saved = prepare_run_dir(run_dir, resume)
    own_status = status is None
    status = status or Status(run_dir, on_progress)
    try:
        status.update("load", 0, 1, force=True)
        t0 = time.time()
        ctx = build_context(cfg, model, tokenizer)
        ctx.timings["load"] = time.time() - t0
        if own_status:
            status.set_plan(job_plan(cfg, len(ctx.candidates), len(ctx.seeds)))
        fp = settings_fingerprint(ctx)
        if saved is not None:
            if saved.get("fingerprints", {}).get("settings") != fp:
                raise RunExistsError(f"{run_dir} was made with other settings, model or data; --resume needs the same")
            if saved.get("finished"):
                if cfg.umap and not (run_dir / "umap.npy").exists():
                    umap_stage(run_dir, cfg.random_state, status)
                if own_status:
                    status.update("done", 1, 1, force=True)
                return run_dir
            ctx.timings = {k: v for k, v in saved.get("timings", {}).items() if k != "factors_reused"}
        write_json_atomic(run_dir / "config.json", _config_record(ctx, {"finished": False}))
        extra = _score_stages(ctx, run_dir, status, fp)
        status.update("finalize", 0, 1, force=True)
        seed_loss, seed_ntok = extra.pop("_seed_loss"), extra.pop("_seed_ntok")
        finalize(ctx, run_dir, seed_loss, seed_ntok, extra)
        if cfg.umap:
            umap_stage(run_dir, cfg.random_state, status)
        if own_status:
            status.update("done", 1, 1, force=True)
        return run_dir
    except BaseException as e:
        if own_status:
            status.fail("cancelled" if isinstance(e, Cancelled | KeyboardInterrupt) else f"{type(e).__name__}: {e}")
        raise


def _score_stages(ctx: ScoreContext, run_dir: Path, status: Status, fp: str) -> dict[str, Any]:
    cur = fit_stage(ctx, run_dir, status)
    dampings = dampings_for(ctx, cur)
    seed_path = run_dir / PARTIAL / "seeds.safetensors"
    (run_dir / PARTIAL).mkdir(exist_ok=True)
    seed_npz = run_dir / PARTIAL / "seeds_meta.npz"
    rank = ctx.cfg.seed_rank
    if seed_npz.exists() and Curvature.read_fingerprint(seed_path) == fp:  # metadata only, not the tensors
        seeds, _ = load_seed_gradients(seed_path, ctx.device)
        with np.load(seed_npz, allow_pickle=False) as z:
            seed_loss, seed_ntok, rank = z["loss"], z["n_tokens"], int(z["rank"]) or None
    else:
        seeds, seed_loss, seed_ntok, rank = seed_stage(ctx, cur, dampings, status)
        save_seed_gradients(seed_path, seeds, fp)
        seeds, _ = load_seed_gradients(seed_path, ctx.device)  # same bytes as a resumed run
        save_npz_atomic(seed_npz, loss=seed_loss, n_tokens=seed_ntok, rank=np.int64(rank or 0))
    scorer = Scorer(seeds, cur, dampings, ctx.cfg.normalize)
    sketcher = Sketcher(ctx.dims, ctx.cfg.sketch_dim, ctx.cfg.random_state, ctx.device)
    score_stage(ctx, scorer, sketcher, run_dir, status)
    save_mean_seed_direction(run_dir / "seed_grads.safetensors", seeds, ctx.cfg.normalize, fp)
    return {
        "damping": dampings,
        "seed_rank": rank,
        "seed_lowrank_error": seeds.lowrank_error,
        "n_seed_columns": seeds.n_seeds,
        "sketch_dim": sketcher.dim,
        "factors": {"n_examples": cur.n_examples, "n_tokens": cur.n_tokens, "kind": cur.kind},
        "_seed_loss": seed_loss,
        "_seed_ntok": seed_ntok,
    }
