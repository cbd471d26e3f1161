"""A run's gradient index as a whole: what index.json records, how well the index reproduces the run's own
exact scores, and new pairs (seeds, queries, an older run's pool) put through the run's own model, curvature
and projection, so their rows can be set against the pool's."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gdig.config import ScoreConfig
from gdig.engine.hooks import GradientCapture, make_batches
from gdig.engine.index import make_projection
from gdig.engine.index_scoring import Anchor, IndexRows, agreement, index_scores
from gdig.engine.memory import tracked_groups, usable_memory_mb
from gdig.inputs.data import Example, TokenizedExample, tokenize_example
from gdig.inputs.model import TrackedModule, find_tracked_modules, load_model, model_fingerprint, prepare_tokenizer
from gdig.rundir.factors import run_curvature
from gdig.rundir.index import HOW_TO_INDEX, load_index
from gdig.rundir.layout import FACTORS, INFLUENCE, read_config
from gdig.rundir.results import RunError

HOW_TO_REINDEX = "delete its index*.npy, index_seeds.npz and index.json, then " + HOW_TO_INDEX
AGREEMENT_ROWS = 20_000  # candidates compared when an index is written (a fixed sample; seconds at any size)


def index_meta(projection, cfg: ScoreConfig, tracked: list[TrackedModule]) -> dict[str, Any]:
    """What index.json records: enough to rebuild the projection (modules, requested k, seed) and to read it."""
    return {
        "k": projection.dim,
        "requested_k": cfg.index_dim,
        "dtype": cfg.index_dtype,
        "projection": projection.kind,
        "projection_version": projection.version,
        "random_state": cfg.random_state,
        "exact": projection.exact,
        "hessian": cfg.hessian,
        "normalize": cfg.normalize,
        "modules": {t.name: [t.d_out, t.d_in] for t in tracked},
    }


def measure_agreement(run_dir: Path, normalize: str) -> dict[str, Any]:
    """How well the index scores seeds it has not seen, measured on the run itself (a fixed sample of
    candidates): the odd seed columns scored from the index as if new, anchored on the even ones, against their
    exact columns; and without the anchor."""
    idx = load_index(run_dir)
    influence = np.load(Path(run_dir) / INFLUENCE, mmap_mode="r", allow_pickle=False)
    n, m = influence.shape
    rows = np.sort(np.random.default_rng(0).choice(n, min(n, AGREEMENT_ROWS), replace=False))
    sample = idx.pool.take(rows)
    exact = np.asarray(influence[rows])
    held, known = np.arange(1, m, 2), np.arange(0, m, 2)
    if m < 2:  # one seed: nothing to anchor on, so the index's own agreement on it
        plain = agreement(exact, index_scores(sample, idx.seeds, normalize))
        return plain | {"without_anchor": plain, "measured_on": "the run's one seed column, without an anchor"}
    queries = idx.seeds.take(held)
    anchor = Anchor(exact, idx.seeds, known)
    return agreement(exact[:, held], index_scores(sample, queries, normalize, anchor)) | {
        "without_anchor": agreement(exact[:, held], index_scores(sample, queries, normalize)),
        "measured_on": f"{len(held)} of the run's seed columns scored as new, anchored on the other {len(known)}",
    }


def run_anchor(exact: np.ndarray, seeds_table, index) -> Anchor | None:
    """The anchor of a run: its exact seed columns (a rescored run's index-scored ones are left out)."""
    scored = seeds_table["scored_from"].to_numpy() if "scored_from" in seeds_table else None
    columns = np.arange(exact.shape[1]) if scored is None else np.flatnonzero(scored != "index")
    if len(columns) == 0 or len(index.seeds) != exact.shape[1]:
        return None
    return Anchor(exact, index.seeds, columns)


class PairError(ValueError):
    """Pairs that cannot be put into a run's index (too long, no target), named."""


@dataclass
class PairGradients:
    """Pairs put through a run's model: their index rows, loss and target tokens, and (when asked) the sum of
    their preconditioned gradients weighted per pair, for token explanations."""

    rows: IndexRows
    loss: np.ndarray
    n_tokens: np.ndarray
    tokenized: list[TokenizedExample]
    direction_sum: dict[str, torch.Tensor] = field(default_factory=dict)


class RunModel:
    """A finished run's model, tracked modules, curvature, dampings and index projection, loaded once: new pairs
    go through it exactly as the run's seeds did (same prompt, tokenisation, capture and whitening)."""

    def __init__(self, run_dir: str | Path, device: str = "auto", model=None, tokenizer=None):
        self.run_dir = Path(run_dir)
        self.config = read_config(self.run_dir)
        if not self.config or not self.config.get("finished"):
            raise RunError(f"{self.run_dir}: not a finished run")
        self.cfg = ScoreConfig.from_dict(self.config["settings"])
        if model is None:
            model, tokenizer = load_model(
                self.cfg.model, device, self.cfg.dtype, self.cfg.trust_remote_code, self.cfg.adapter, self.cfg.gguf_file
            )
        else:  # a model the caller loaded: made ready as build_context makes it
            prepare_tokenizer(tokenizer, model.get_input_embeddings().num_embeddings)
            model.eval()
        self.model, self.tokenizer = model, tokenizer
        self._check_model()
        self.tracked = find_tracked_modules(model, self.cfg.tracked_modules())
        self.device = next(model.parameters()).device
        self.groups = self._groups()
        self.curvature = self._curvature(self.tracked) if len(self.groups) == 1 else None
        self.dampings = {t.name: float(self.config.get("module_damping", {}).get(t.name, 0.0)) for t in self.tracked}
        self.projection = None

    def _check_model(self) -> None:
        """Refuse a model whose weights differ from the run's (its scores would not be the run's)."""
        want = self.config.get("fingerprints", {}).get("model")
        if want and model_fingerprint(self.model) != want:
            raise RunError(
                f"{self.run_dir}: the model at {self.cfg.model} is not the one this run was scored with "
                "(its weights changed); score the run again"
            )

    def use_projection(self, kind: str, requested_k: int, random_state: int, expect_k: int | None = None):
        """The run's projection, rebuilt from what index.json records (checked against its k)."""
        dims = {t.name: (t.d_in, t.d_out) for t in self.tracked}
        self.projection = make_projection(kind, dims, requested_k, random_state, self.device)
        if expect_k is not None and self.projection.dim != expect_k:
            raise RunError(f"{self.run_dir}: the index's projection could not be rebuilt (k {expect_k})")
        return self.projection

    def use_index(self, index) -> None:
        """The projection of a run's index (a RunIndex), refusing one written by another version of its hash."""
        meta = index.meta
        projection = self.use_projection(index.projection, meta["requested_k"], meta["random_state"], index.dim)
        if meta.get("projection_version", 1) != projection.version:
            raise RunError(f"{self.run_dir}: its index was written by an older version; {HOW_TO_REINDEX}")

    def tokenize(self, examples: list[Example], role: str, strict: bool = True) -> list[TokenizedExample]:
        """Token ids as the run made them; `strict`: a pair longer than the run's max length or without a target
        token is refused, by id (its scores would not be comparable). The run's own pool is read as it was."""
        max_length = self.cfg.data.max_length
        out = [tokenize_example(self.tokenizer, e, max_length) for e in examples]
        if not strict:
            return out
        long = [e.id for e, t in zip(examples, out, strict=True) if t.truncated]
        if long:
            raise PairError(
                f"{role}: {len(long)} pair(s) longer than the run's max length ({max_length} tokens): ids "
                f"{', '.join(long[:10])}; shorten them or score a new run with a larger --max-length"
            )
        empty = [e.id for e, t in zip(examples, out, strict=True) if t.n_target_tokens == 0]
        if empty:
            raise PairError(f"{role}: pair(s) with no target token: ids {', '.join(empty[:10])}")
        return out

    def gradients(
        self,
        examples: list[Example],
        role: str,
        directions: str | None = None,
        on_batch: Callable[[int, int], None] | None = None,
        tokenized: list[TokenizedExample] | None = None,
    ) -> PairGradients:
        """Index rows of `examples` (one forward and backward each, per module group). `directions` (the run's
        normalisation): also the weighted sum of their preconditioned gradients per module, as
        gdig.engine.seeds.mean_seed_direction weighs them (unit: each divided by its norm, which in module groups
        needs every group's pass first, so a second pass per group)."""
        toks = tokenized if tokenized is not None else self.tokenize(examples, role)
        n = len(toks)
        got = _Sums(self.projection.empty(n, self.device), torch.zeros(n, dtype=torch.float64, device=self.device))
        got.loss, got.n_tokens = np.zeros(n, np.float32), np.zeros(n, np.int64)
        order = sorted(range(n), key=lambda i: -len(toks[i].input_ids))
        pad, cfg = self.tokenizer.pad_token_id, self.cfg
        batches = list(make_batches(toks, order, pad, cfg.batch_size, cfg.token_budget, cfg.padding_side))
        passes = [(g, directions) for g in self.groups]
        if directions == "unit" and len(self.groups) > 1:
            got.norms = torch.zeros(len(self.tracked), n, dtype=torch.float64, device=self.device)
            passes = [(g, None) for g in self.groups] + [(g, "stored") for g in self.groups]
        for i, (group, how) in enumerate(passes):
            tick = None if on_batch is None else _scaled(on_batch, i, len(passes), n)
            self._group_pass(group, batches, got, how, tick)
        return PairGradients(
            IndexRows.from_projected(got.projected, got.self_inf), got.loss, got.n_tokens, toks, got.sums
        )

    def _group_pass(self, group: list[TrackedModule], batches, got: _Sums, how: str | None, tick) -> None:
        """One pass over the batches for one module group: the rows' projections and self-influences, continued in
        module order; the weighted directions when `how` says (stored: the unit weights from the stored norms)."""
        cur = self.curvature if self.curvature is not None else self._curvature(group)
        first = next(i for i, t in enumerate(self.tracked) if t.name == group[0].name)
        done = 0
        with GradientCapture(self.model, group, self.tracked) as capture:
            for batch in batches:
                cap = capture.run(batch)
                rows = torch.tensor(batch.index, device=self.device)
                with torch.no_grad():
                    whitened = {t.name: cur.whiten_captured(t.name, cap, self.dampings[t.name]) for t in group}
                    norm2 = torch.stack([(w * w).sum((-2, -1)).double() for w in whitened.values()])
                    if how != "stored":
                        for j, (name, w) in enumerate(whitened.items()):
                            got.projected[rows] += self.projection.project(name, w)
                            got.self_inf[rows] += norm2[j]
                    if got.norms is not None and how is None:
                        got.norms[first : first + len(group), rows] = norm2
                    if how is not None:
                        weight = _weights(got.norms[:, rows] if how == "stored" else norm2, how)
                        self._add_directions(cur, got.sums, whitened, weight)
                got.loss[batch.index] = cap.loss.detach().float().cpu().numpy()
                got.n_tokens[batch.index] = cap.n_target.cpu().numpy()
                done += len(batch.index)
                if tick:
                    tick(done)
        del cur

    def _groups(self) -> list[list[TrackedModule]]:
        """The run's module groups when its factors take more than half the memory free now (each pass then holds
        one group's factors, as the run did), else one group: every factor loaded once, for every call."""
        groups = tracked_groups(self.tracked, self.cfg.module_partitions)
        path = self.run_dir / FACTORS
        size = path.stat().st_size if path.exists() else 0
        return groups if size > usable_memory_mb(self.device, None) * 2**20 / 2 else [self.tracked]

    def _curvature(self, group: list[TrackedModule]):
        """The factors of `group`'s modules, read from the run's factors file."""
        return run_curvature(self.run_dir / FACTORS, self.cfg.hessian, self.device, [t.name for t in group])

    def _add_directions(self, cur, sums: dict[str, torch.Tensor], whitened: dict[str, torch.Tensor], weight) -> None:
        """Add sum_z weight_z (F + lambda)^-1 grad L(z) per module: the weighted sum is taken in the eigenbasis
        and rotated back once per batch (linear, so the same as rotating each example back)."""
        for name, w in whitened.items():
            v = cur.unwhiten(name, torch.einsum("b,boi->oi", weight, w), self.dampings[name])
            sums[name] = v if name not in sums else sums[name] + v


@dataclass
class _Sums:
    """What a pass over pairs adds to: index rows, self-influences, loss, target tokens, weighted directions;
    `norms`: each module's squared norm per pair (module groups with unit directions)."""

    projected: torch.Tensor
    self_inf: torch.Tensor
    loss: np.ndarray | None = None
    n_tokens: np.ndarray | None = None
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    norms: torch.Tensor | None = None


def _weights(norm2: torch.Tensor, how: str) -> torch.Tensor:
    """Each pair's weight in the directions' sum from its modules' squared norms (modules, pairs): unit (and stored,
    its second pass), one over its norm (0 for a zero gradient); none and relatif, 1."""
    norm = norm2.sum(0).sqrt()
    weight = norm.reciprocal() if how in ("unit", "stored") else torch.ones_like(norm)
    return torch.where(torch.isfinite(weight), weight, torch.zeros_like(weight)).float()


def _scaled(on_batch: Callable[[int, int], None], i: int, passes: int, n: int) -> Callable[[int], None]:
    """Progress of pass i of `passes` over n pairs, reported as pairs of n."""
    return lambda done: on_batch((i * n + done) // passes, n)


def examples_from_table(table, role: str) -> list[Example]:
    """Examples rebuilt from a run's candidates.parquet or seeds.parquet (its stored prompt and target)."""
    ids = table["id"].astype(str).tolist()
    prompts, targets = table["prompt"].tolist(), table["target"].tolist()
    return [Example(i, p, t, {}, role) for i, p, t in zip(ids, prompts, targets, strict=True)]


def build_index(
    run_dir: str | Path,
    index_dim: int | None = None,
    index_dtype: str | None = None,
    device: str = "auto",
    model=None,
    tokenizer=None,
    on_progress: Callable[[str, int, int], None] | None = None,
    chunk: int = 1024,
    projection: str | None = None,
    projection_seed: int | None = None,
) -> dict[str, Any]:
    """`gdig index RUN`: the gradient index of a run made without one (one pass over its pool and seeds, from the
    prompts and targets the run stored); returns index.json's record. The rows are written straight to disk."""
    from gdig.rundir.lock import writer_lock
    from gdig.rundir.results import load_run

    run = load_run(run_dir)
    with writer_lock(run.path):  # refused while another job writes the run
        return _write_index(
            run, index_dim, index_dtype, device, model, tokenizer, on_progress, chunk, projection, projection_seed
        )


def _write_index(
    run, index_dim, index_dtype, device, model, tokenizer, on_progress, chunk, projection, projection_seed
) -> dict[str, Any]:
    from gdig.atomic import atomic_path
    from gdig.rundir.index import has_index, write_index_meta, write_index_norms, write_index_seeds
    from gdig.rundir.layout import INDEX, write_config

    if has_index(run.path):
        raise RunError(f"{run.path} already has a gradient index")
    if run.settings.seed_batch != 1:
        raise RunError(f"{run.path} averages seeds in groups (--seed-batch); index it by scoring it again")
    cfg = ScoreConfig.from_dict(run.config["settings"])
    cfg.index_dim = index_dim if index_dim is not None else cfg.index_dim
    cfg.index_dtype = index_dtype or cfg.index_dtype
    cfg.index_projection = projection or cfg.index_projection
    cfg.random_state = cfg.random_state if projection_seed is None else projection_seed  # the projection's only
    cfg.validate()
    if cfg.index_dim == 0:
        raise RunError("--index-dim 0 means no index")
    runner = RunModel(run.path, device, model, tokenizer)
    runner.cfg = cfg
    projection = runner.use_projection(cfg.index_projection, cfg.index_dim, cfg.random_state)
    progress = on_progress or (lambda *a: None)
    examples = examples_from_table(run.candidates, "candidate")
    toks = runner.tokenize(examples, "candidates", strict=False)
    norms = np.zeros((run.n, 3), np.float32)  # projected length, exact norm, int8 rows' scale
    with atomic_path(run.path / INDEX) as tmp:
        rows = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.dtype(cfg.index_dtype), shape=(run.n, projection.dim))
        for start in range(0, run.n, chunk):
            part = slice(start, min(start + chunk, run.n))
            got = runner.gradients(examples[part], "candidates", tokenized=toks[part])
            stored = got.rows.stored(cfg.index_dtype)
            rows[part] = stored.rows
            norms[part, :2] = np.stack([stored.projected_norm, stored.norm], axis=1)
            norms[part, 2] = 0.0 if stored.scale is None else stored.scale
            progress("index", part.stop, run.n)
        rows.flush()
        del rows
    write_index_norms(run.path, norms[:, 0], norms[:, 1], norms[:, 2] if cfg.index_dtype == "int8" else None)
    seed_examples = examples_from_table(run.seeds, "seed")
    seeds = runner.gradients(seed_examples, "seeds", tokenized=runner.tokenize(seed_examples, "seeds", strict=False))
    write_index_seeds(run.path, seeds.rows)
    meta = index_meta(projection, cfg, runner.tracked)
    write_index_meta(run.path, meta)
    meta["agreement"] = measure_agreement(run.path, cfg.normalize)
    write_index_meta(run.path, meta)
    config = read_config(run.path)
    config["index"] = {k: meta[k] for k in ("k", "dtype", "agreement")} | {"added_later": True}
    write_config(run.path, config)
    return meta
