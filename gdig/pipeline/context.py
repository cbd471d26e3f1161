"""What every `score` stage works on: the model, its tracked modules, the tokenized candidates and seeds, their
fingerprints and the timings so far; and the record of it all written to config.json."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from gdig.config import ScoreConfig
from gdig.engine.distributed import SINGLE, World
from gdig.engine.hooks import Batch, Captured, GradientCapture, batch_indices, collate, make_batches
from gdig.inputs.data import Dataset, TokenizationReport, TokenizedExample, load_dataset, tokenize_dataset
from gdig.inputs.model import TrackedModule, find_tracked_modules, load_model, model_fingerprint, prepare_tokenizer
from gdig.rundir.format import FORMAT
from gdig.rundir.layout import versions

# Settings that only say where things are or pace the work: the model's and the data's own fingerprints cover them.
VOLATILE_SETTINGS = (
    "out",
    "device",
    "model",
    "adapter",
    "gguf_file",
    "candidates",
    "seeds",
    "umap",
    "checkpoint_seconds",
    "module_partitions",
    "shard_factors",
    "memory_gb",
)


INDEX_SETTINGS = ("index_dim", "index_dtype", "index_projection")


@dataclass
class ScoreContext:
    """The loaded model and data of one run, shared by its stages."""

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
    world: World = SINGLE  # this process's place among the job's processes (torchrun)
    part: list[TrackedModule] | None = None  # the group of tracked modules this pass works on (--module-partitions)

    @property
    def dims(self) -> dict[str, tuple[int, int]]:
        """(d_in, d_out) of every tracked module."""
        return {t.name: (t.d_in, t.d_out) for t in self.tracked}

    @property
    def work(self) -> list[TrackedModule]:
        """The modules this pass captures, fits and scores: its group, or every tracked module."""
        return self.tracked if self.part is None else self.part

    @property
    def work_dims(self) -> dict[str, tuple[int, int]]:
        """(d_in, d_out) of the modules this pass works on."""
        return {t.name: (t.d_in, t.d_out) for t in self.work}

    def for_part(self, part: list[TrackedModule]) -> ScoreContext:
        """This context working on one group of its modules (timings shared, captures its own)."""
        return dataclasses.replace(self, part=part, captures={})

    def capture(self) -> GradientCapture:
        """Hooks on the modules this pass works on, the loss computed as with every tracked module."""
        return GradientCapture(self.model, self.work, self.tracked)

    def batches(self, toks: list[TokenizedExample], order: list[int]):
        """Padded batches of `toks` in `order`, by the run's batch size or token budget."""
        cfg = self.cfg
        return make_batches(
            toks, order, self.tokenizer.pad_token_id, cfg.batch_size, cfg.token_budget, cfg.padding_side
        )

    def batch_indices(self, toks: list[TokenizedExample], order: list[int]) -> list[list[int]]:
        """The examples of each batch `batches` would make of `order` (to share batches among processes)."""
        return batch_indices(toks, order, self.cfg.batch_size, self.cfg.token_budget)

    def collate(self, toks: list[TokenizedExample], index: list[int]) -> Batch:
        """One padded batch of the examples `index`."""
        return collate([toks[i] for i in index], index, self.tokenizer.pad_token_id, self.cfg.padding_side)


def by_length(toks: list[TokenizedExample], subset: list[int] | None = None) -> list[int]:
    """Indices sorted by length (longest first, stable): less padding, and memory peaks show up at once."""
    idx = list(range(len(toks))) if subset is None else list(subset)
    return sorted(idx, key=lambda i: -len(toks[i].input_ids))


def fit_subset(n_candidates: int, fit_examples: int | None, random_state: int) -> list[int]:
    """The candidates the curvature is fitted on (the run and its plan alike): all, or a fixed random subset of
    `fit_examples`, in file order."""
    if fit_examples is None or fit_examples >= n_candidates:
        return list(range(n_candidates))
    rng = np.random.default_rng(random_state)
    return sorted(rng.choice(n_candidates, fit_examples, replace=False).tolist())


def read_inputs(cfg: ScoreConfig) -> tuple[Dataset, Dataset]:
    """Both files read and checked (schema, fields, ids): before the model loads or anything is written, so a bad
    line is reported in a second and leaves no run folder."""
    d = cfg.data
    candidates = load_dataset(cfg.candidates, d.prompt_template, d.src_lang, d.trg_lang, role="candidate")
    seeds = load_dataset(cfg.seeds, d.prompt_template, d.src_lang, d.trg_lang, role="seed")
    return candidates, seeds


def build_context(
    cfg: ScoreConfig, model=None, tokenizer=None, world: World = SINGLE, inputs: tuple[Dataset, Dataset] | None = None
) -> ScoreContext:
    """Load (or take) the model, find its tracked modules, read (unless given) and tokenize both files."""
    candidates, seeds = inputs or read_inputs(cfg)
    if model is None:
        model, tokenizer = load_model(
            cfg.model, cfg.device, cfg.dtype, cfg.trust_remote_code, adapter=cfg.adapter, gguf_file=cfg.gguf_file
        )
    else:
        prepare_tokenizer(tokenizer, model.get_input_embeddings().num_embeddings)
    model.eval()
    tracked = find_tracked_modules(model, cfg.tracked_modules())
    d = cfg.data
    cand_tok, cand_rep = tokenize_dataset(tokenizer, candidates, d.max_length)
    seed_tok, seed_rep = tokenize_dataset(tokenizer, seeds, d.max_length)
    fps = {"model": model_fingerprint(model), "candidates": candidates.fingerprint, "seeds": seeds.fingerprint}
    device = next(model.parameters()).device
    reports = {"candidates": cand_rep, "seeds": seed_rep}
    return ScoreContext(
        cfg, model, tokenizer, tracked, device, candidates, seeds, cand_tok, seed_tok, reports, fps, world=world
    )


def short_hash(obj: Any) -> str:
    """A stable 16-hex-digit hash of a JSON-able object (fingerprints of settings and inputs)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def factors_fingerprint(ctx: ScoreContext) -> str:
    """What the fitted factors depend on: the model, the candidates and the curvature settings (so another run
    on the same model and pool can reuse them)."""
    return short_hash([ctx.fingerprints["model"], ctx.fingerprints["candidates"], ctx.cfg.curvature_settings()])


def settings_fingerprint(ctx: ScoreContext) -> str:
    """What the scores depend on: inputs and settings, less those that only move or pace the work."""
    settings = ctx.cfg.to_dict()
    for volatile in VOLATILE_SETTINGS:
        settings.pop(volatile)
    if not settings["adequacy"]:  # off: the fingerprint of a run made before the signals existed
        settings.pop("adequacy")
    if not settings["index_dim"]:  # no index: the fingerprint of a run made before the index existed
        for key in INDEX_SETTINGS:
            settings.pop(key)
    return short_hash([ctx.fingerprints, settings])


def config_record(ctx: ScoreContext, extra: dict[str, Any]) -> dict[str, Any]:
    """config.json: every setting, versions, fingerprints, modules, tokenization and timings, plus `extra`."""
    return {
        "format": FORMAT,
        "settings": ctx.cfg.to_dict(),
        "fingerprints": ctx.fingerprints | {"settings": settings_fingerprint(ctx)},
        "versions": versions(),
        "device": str(ctx.device),
        "dtype": str(next(ctx.model.parameters()).dtype),
        "modules": [{"name": t.name, "d_in": t.d_in, "d_out": t.d_out, "conv1d": t.transposed} for t in ctx.tracked],
        "n_candidates": len(ctx.candidates),
        "n_seeds": len(ctx.seeds),
        "tokenization": {k: vars(r) | {"summary": r.summary()} for k, r in ctx.reports.items()},
        "timings": ctx.timings,
    } | extra
