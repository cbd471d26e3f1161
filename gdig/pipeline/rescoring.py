"""New seed sets from a run's gradient index (`gdig rescore`): only the new seeds go through the model, then one
matrix product against the pool's index rows. The result is a complete run directory that opens like any other;
the seeds kept from the parent keep their exact columns, the new ones are marked as scored from the index.

Dropping seeds is exact (their columns go). The mean seed direction that token explanations use is updated by
subtracting the dropped seeds' preconditioned gradients and adding the new ones', so it too needs only the
changed seeds' passes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from gdig.atomic import atomic_path
from gdig.engine.index_scoring import Anchor, IndexRows, index_scores
from gdig.inputs.data import Dataset, load_dataset
from gdig.pipeline.index_run import RunModel, examples_from_table, run_anchor
from gdig.rundir.index import INDEX, INDEX_META, INDEX_NORMS, index_note, load_index, write_index_seeds
from gdig.rundir.layout import CANDIDATES, CONFIG, FACTORS, INFLUENCE, SEED_GRADS, SEEDS, SKETCH, UMAP, prepare
from gdig.rundir.results import RunResults, load_run
from gdig.rundir.seeds import load_mean_direction, save_mean_direction_tensors

# The pool's files: the same in a rescored run (its seeds' index rows are its own: index_seeds.npz)
SHARED_FILES = (CANDIDATES, SKETCH, UMAP, FACTORS, INDEX, INDEX_NORMS, INDEX_META)
RESERVED = ("loss", "n_tokens", "n_input_tokens", "truncated", "prompt", "target", "record", "scored_from")
FROM_INDEX = "index"  # seeds.parquet's `scored_from` for a column computed from the index
EXACT = "exact"


@dataclass
class SeedEdit:
    """What changes in a run's seed set: run seeds dropped (by id), new seeds added, or the whole set replaced."""

    add: Dataset | None = None
    drop: Sequence[str] = ()
    replace: bool = False  # True: the new seeds alone (the run's seeds all go)


def read_seed_file(run: RunResults, path: str | Path) -> Dataset:
    """A seed file read with the run's own prompt template and default languages (clear errors: DataError)."""
    data = run.settings.data
    return load_dataset(path, data.prompt_template, data.src_lang, data.trg_lang, role="seed")


def with_fresh_ids(add: Dataset, taken: set[str]) -> Dataset:
    """New seeds from a file without ids of its own (their ids are row numbers, which the run's seeds use too)
    renamed added-1, added-2, ..., skipping ids already taken; a file's own ids are kept (a clash is refused)."""
    if all("id" in e.record for e in add.examples):
        return add
    fresh, n = [], 0
    for _ in add.examples:
        n += 1
        while f"added-{n}" in taken:
            n += 1
        fresh.append(f"added-{n}")
    examples = [dataclasses.replace(e, id=i) for e, i in zip(add.examples, fresh, strict=True)]
    return dataclasses.replace(add, examples=examples)


def check_edit(run: RunResults, edit: SeedEdit) -> list[int]:
    """The run's seed columns kept, after refusing an edit that cannot be made (before any work)."""
    seeds = run.seeds
    ids = seeds["id"].astype(str).tolist()
    unknown = sorted(set(map(str, edit.drop)) - set(ids))
    if unknown:
        raise ValueError(f"no seed with id {', '.join(unknown[:10])} in {run.path}")
    batch = run.settings.seed_batch
    if batch != 1 and not edit.replace:
        raise ValueError(
            f"{run.path} averages seeds in groups of {batch}: its seeds can only be replaced as a whole (--seeds "
            "FILE without --add or --drop)"
        )
    kept = [] if edit.replace else [j for j, i in enumerate(ids) if i not in set(map(str, edit.drop))]
    if edit.add is not None and not edit.replace:
        clash = sorted(set(edit.add.ids) & {ids[j] for j in kept})
        if clash:
            raise ValueError(f"new seeds reuse ids of the run's seeds: {', '.join(clash[:10])}; give them other ids")
    if not kept and (edit.add is None or len(edit.add) == 0):
        raise ValueError("the seed set would be empty")
    return kept


def rescore(
    run_dir: str | Path,
    out: str | Path,
    edit: SeedEdit,
    device: str = "auto",
    model=None,
    tokenizer=None,
    runner: RunModel | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> Path:
    """A new run directory `out` with the run's seeds edited: kept columns copied exactly, new ones scored from
    the index. Nothing is written when the input is refused; `out` appears whole or not at all."""
    t0 = time.time()
    run = load_run(run_dir)
    index = load_index(run.path)
    if edit.add is not None and not edit.replace:
        edit = dataclasses.replace(edit, add=with_fresh_ids(edit.add, set(run.seeds["id"].astype(str))))
    kept = check_edit(run, edit)
    out = Path(out)
    prepare(out, resume=False)  # refuses an existing run or a non-empty folder
    staging = out.parent / f".{out.name}.rescoring"
    try:
        runner = runner or RunModel(run.path, device, model, tokenizer)
        runner.use_index(index)
        progress = on_progress or (lambda *a: None)
        normalize = run.settings.normalize
        dropped = run.seeds.iloc[sorted(set(range(len(run.seeds))) - set(kept))]
        added = edit.add.examples if edit.add is not None else []
        new = runner.gradients(added, "new seeds", normalize, lambda d, n: progress("new seeds", d, n))
        t_model = time.time() - t0
        gone = None
        if not edit.replace and len(dropped):
            old = examples_from_table(dropped, "seed")  # tokenized as the run did: a truncated seed drops too
            gone = runner.gradients(old, "dropped seeds", normalize, tokenized=runner.tokenize(old, "seeds", False))
        t1 = time.time()
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        _share_pool_files(run.path, staging)
        _write_influence(run, index, kept, new.rows, normalize, staging / INFLUENCE)
        _write_seeds(run, kept, edit.add, new, staging / SEEDS)
        write_index_seeds(staging, _seed_rows(index.seeds, kept, new.rows))
        _write_direction(run, kept, new, gone, normalize, staging / SEED_GRADS)
        seconds = {"seed_passes": t_model, "index_product": time.time() - t1, "total": time.time() - t0}
        _write_config(run, index, edit, kept, seconds, staging / CONFIG)
        _publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if out.exists() and not any(out.iterdir()):
            out.rmdir()
        raise
    return out


def _share_pool_files(parent: Path, dest: Path) -> None:
    """The pool's files, hard-linked where the file system allows (a rescored run costs only its seeds)."""
    for name in SHARED_FILES:
        src = parent / name
        if not src.exists():
            continue
        try:
            os.link(src, dest / name)
        except OSError:
            shutil.copyfile(src, dest / name)


def _write_influence(run: RunResults, index, kept: list[int], new_rows, normalize: str, path: Path) -> None:
    """influence.npy: the kept columns copied exactly, then the new seeds' columns from the index (anchored on
    the parent's exact columns, all of them, dropped ones too), streamed in blocks of rows (never the whole
    matrix in memory)."""
    n, m = run.n, len(kept) + len(new_rows)
    anchor = run_anchor(run.influence, run.seeds, index)
    block = max(1, min(1 << 15, (256 << 20) // max(4 * (m + index.dim), 1)))
    with atomic_path(path) as tmp:
        target = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, m))
        for start in range(0, n, block):
            rows = slice(start, min(start + block, n))
            if kept:
                target[rows, : len(kept)] = run.influence[rows][:, kept]
            if len(new_rows):
                pool = _rows_slice(index.pool, rows)
                target[rows, len(kept) :] = index_scores(pool, new_rows, normalize, _anchor_rows(anchor, rows))
        target.flush()
        del target


def _anchor_rows(anchor: Anchor | None, rows: slice) -> Anchor | None:
    """The anchor restricted to a block of candidates (its seeds stay whole)."""
    return None if anchor is None else Anchor(anchor.exact[rows], anchor.seeds, anchor.columns)


def _rows_slice(rows: IndexRows, sl: slice) -> IndexRows:
    scale = None if rows.scale is None else rows.scale[sl]
    return IndexRows(rows.rows[sl], rows.projected_norm[sl], rows.norm[sl], scale)


def _seed_rows(parent: IndexRows, kept: list[int], new: IndexRows) -> IndexRows:
    """The new seed set's index rows, column for column: the kept seeds' from the parent, then the new ones."""
    return IndexRows(
        np.concatenate([parent.unit_rows()[kept], new.unit_rows()]),
        np.concatenate([parent.projected_norm[kept], new.projected_norm]),
        np.concatenate([parent.norm[kept], new.norm]),
    )


def _write_seeds(run: RunResults, kept: list[int], add: Dataset | None, new, path: Path) -> None:
    """seeds.parquet: the kept seeds (exact) and the new ones (from the index), one column each."""
    old = run.seeds.iloc[kept].copy()
    old["scored_from"] = old.get("scored_from", pd.Series(EXACT, index=old.index)).fillna(EXACT)
    parts = [old]
    if add is not None and len(add):
        fields = pd.DataFrame.from_records([e.record for e in add.examples]).drop(columns="id", errors="ignore")
        parts.append(
            pd.DataFrame(
                {
                    "id": add.ids,
                    "loss": new.loss,
                    "n_tokens": new.n_tokens,
                    "n_input_tokens": [len(t.input_ids) for t in new.tokenized],
                    "truncated": False,
                    "prompt": [e.prompt for e in add.examples],
                    "target": [e.target for e in add.examples],
                    "record": [json.dumps(e.record, ensure_ascii=False, default=str) for e in add.examples],
                    "scored_from": FROM_INDEX,
                }
            ).join(fields.drop(columns=[c for c in fields.columns if c in RESERVED], errors="ignore"))
        )
    table = pd.concat(parts, ignore_index=True)
    table["seed_batch"] = np.arange(len(table), dtype=np.int64)
    table["id"] = table["id"].astype(str)
    with atomic_path(path) as tmp:
        table.to_parquet(tmp, index=False)


def _write_direction(run: RunResults, kept: list[int], new, gone, normalize: str, path: Path) -> None:
    """seed_grads.safetensors for the new seed set: the parent's weighted sum less the dropped seeds' plus the
    new seeds', over the new number of columns; each column's self-influence beside it."""
    import torch

    parent = load_mean_direction(run.path / SEED_GRADS, "cpu")
    n_old = run.influence.shape[1]
    total = {}
    for name, mean in parent["mean"].items():
        v = mean.double() * n_old if kept else torch.zeros_like(mean, dtype=torch.float64)
        if gone is not None and kept:
            v = v - gone.direction_sum[name].double().cpu()
        if new.direction_sum:
            v = v + new.direction_sum[name].double().cpu()
        total[name] = v
    n_new = len(kept) + len(new.rows)
    mean = {name: (v / max(n_new, 1)).float() for name, v in total.items()}
    self_inf = np.concatenate([parent["self_influence"][kept], np.asarray(new.rows.norm, np.float64) ** 2])
    save_mean_direction_tensors(path, mean, torch.from_numpy(self_inf).float(), normalize)


def _write_config(run: RunResults, index, edit: SeedEdit, kept: list[int], seconds: dict, path: Path) -> None:
    """config.json of the rescored run: the parent's, with its seed set, counts and how it was scored."""
    from gdig.atomic import write_json_atomic

    cfg = json.loads(json.dumps(run.config))
    n_new = len(edit.add) if edit.add is not None else 0
    cfg["settings"]["seed_batch"] = 1
    if edit.add is not None:
        cfg["settings"]["seeds"] = edit.add.path
        cfg["fingerprints"]["seeds"] = edit.add.fingerprint
    cfg["n_seeds"] = cfg["n_seed_columns"] = len(kept) + n_new
    cfg["seed_rank_kept"] = None
    cfg["timings"] = {"rescore": seconds["total"]}
    cfg["scored_from_index"] = {
        "parent": str(run.path),
        "k": index.dim,
        "dtype": index.meta.get("dtype"),
        "agreement": index.meta.get("agreement", {}),
        "exact_columns": len(kept),
        "index_columns": n_new,
        "dropped": sorted(map(str, edit.drop)),
        "replaced": edit.replace,
        "seconds": seconds,
    }
    write_json_atomic(path, cfg)


def _publish(staging: Path, out: Path) -> None:
    """Move the finished files into `out` (config.json last), then drop the staging folder."""
    out.mkdir(parents=True, exist_ok=True)
    for f in sorted(staging.iterdir(), key=lambda p: p.name == CONFIG):
        os.replace(f, out / f.name)
    staging.rmdir()


def describe(run: RunResults) -> str | None:
    """One line for a run scored from an index (None for an exact run): parent, k and the measured agreement."""
    return index_note(run.config)
