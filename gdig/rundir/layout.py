"""The run directory's file names, the checks before a run writes into a folder, and the config record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gdig.atomic import write_json_atomic
from gdig.rundir.format import FORMAT, upgrade

CONFIG = "config.json"
STATUS = "status.json"
CANDIDATES = "candidates.parquet"
SEEDS = "seeds.parquet"
FACTORS = "factors.safetensors"
INFLUENCE = "influence.npy"
SKETCH = "sketch.npy"
UMAP = "umap.npy"
SEED_GRADS = "seed_grads.safetensors"  # the mean preconditioned seed direction, for token explanations
INDEX = "index.npy"  # the gradient index (gdig.engine.index): unit rows of projected whitened gradients, [N, k]
INDEX_NORMS = "index_norms.npy"  # [N, 2] float32: each row's projected length, exact whitened norm (int8: scale)
INDEX_SEEDS = "index_seeds.npz"  # the seeds' rows, lengths and norms, as INDEX and INDEX_NORMS
INDEX_META = "index.json"  # k, projection, seed, measured agreement; written last: its presence means complete
SELECTIONS = "selections"
EVALUATIONS = "evaluations"  # gdig evaluate's folders started from the Compare page, one per evaluation
PARTIAL = "partial"  # chunks and checkpoints of a run in progress; removed when it finishes
CANCEL = "cancel"  # its appearance asks the worker to stop between batches
OVERRIDES = "overrides.json"
CURATION = "curation.json"
LAST_BULK = "last_bulk.json"  # the last bulk decision: the ids it changed and their decisions before (undo)
DEMO_REPORT = "demo_report.json"
JOB = "job.json"  # the app's worker: pid and command
WRITER_LOCK = "writer.lock"  # held (flock) by the job writing the run: one writer at a time (gdig.rundir.lock)
JOB_SETTINGS = "job-settings.json"
WORKER_LOG = "worker.log"
RANK_STATUS = "status.rank{rank}.json"  # in partial/: the progress of each rank but 0 (rank 0 sums them up)

REQUIRED = (CONFIG, CANDIDATES, SEEDS, INFLUENCE, SKETCH)  # what a finished run must hold
BOOKKEEPING = {
    JOB,
    JOB_SETTINGS,
    WORKER_LOG,
    CANCEL,
    STATUS,
    WRITER_LOCK,
}  # written by the app before the worker starts


class RunExistsError(ValueError):
    """A folder that already holds another run (or other files), and how to go on."""


def prepare(run_dir: Path, resume: bool) -> dict[str, Any] | None:
    """Refuse to touch a finished or foreign run unless resuming; return the saved config when resuming."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunExistsError(f"{run_dir} exists and is not a folder")
    if (run_dir / CONFIG).exists():
        if not resume:
            raise RunExistsError(
                f"{run_dir} already holds a run; pass --resume to continue it, or choose another --out"
            )
        return upgrade(json.loads((run_dir / CONFIG).read_text()))
    if run_dir.exists() and any(p.name not in BOOKKEEPING for p in run_dir.iterdir()) and not resume:
        raise RunExistsError(f"{run_dir} is not empty; choose a new folder for --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    return None


def read_config(run_dir: str | Path) -> dict[str, Any] | None:
    """config.json of a run in the current format (gdig.rundir.format.upgrade), or None when there is none (or it
    cannot be read)."""
    try:
        return upgrade(json.loads((Path(run_dir) / CONFIG).read_text()))
    except (OSError, ValueError):
        return None


def write_config(run_dir: str | Path, record: dict[str, Any]) -> None:
    """Replace config.json atomically (a reader sees the old record or the new one), in the current format."""
    write_json_atomic(Path(run_dir) / CONFIG, {"format": FORMAT} | record)


def is_finished(run_dir: str | Path) -> bool:
    """Whether the run's final files are all written (config.json says so last)."""
    return bool((read_config(run_dir) or {}).get("finished"))


def versions() -> dict[str, str]:
    """Library versions recorded with a run, so a figure can be traced to the code that made it."""
    import importlib.metadata as md

    out = {}
    for pkg in ("gdig-studio", "torch", "transformers", "numpy", "safetensors", "scikit-learn", "umap-learn"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    return out


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a safetensors file we wrote; {} when missing or unreadable (then it is not reusable)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            return f.metadata() or {}
    except Exception:  # a missing or corrupt file is simply not reusable
        return {}


def read_fingerprint(path: str | Path) -> str | None:
    """The `fingerprint` metadata of a safetensors file we wrote; None when missing or unreadable."""
    return read_metadata(path).get("fingerprint")


def folder_bytes(path: str | Path) -> int:
    """Size on disk of every file under `path` (0 when it is not a folder)."""
    path = Path(path)
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0
