"""Resumable curvature fits: a fit pass's partial sums saved in partial/ with the mask of the batches they cover
(safetensors, written atomically). Rank 0 keeps `{stage}.safetensors`; with several processes each other rank
keeps `{stage}.rank{r}.safetensors` over its own batches. Sums add, so a resumed pass (with any number of
processes) restores them all, skips every covered batch and ends with the same sums as an uninterrupted one."""

from __future__ import annotations

import time
from pathlib import Path

from gdig.atomic import atomic_path
from gdig.rundir.layout import read_metadata

COVERED = "covered"  # the uint8 mask of the batches a checkpoint's sums cover


SPACING = 20  # a periodic save waits at least this many times as long as the last save took: <= 5% of the time


class FitCheckpoint:
    """A fit pass's partial sums saved with the batches they cover: every `every_seconds` (and at least SPACING
    times the last save's duration apart), when the pass is cancelled, and when a pass that another builds on
    completes. A resumed pass restores them and skips those batches; in one process it ends with the same sums
    bit for bit as an uninterrupted one."""

    def __init__(self, folder: str | Path, fingerprint: str, every_seconds: float = 300.0, *, rank: int):
        self.folder, self.fingerprint, self.every, self.rank = Path(folder), fingerprint, every_seconds, rank
        self._last = time.time()
        self._took = 0.0  # the last save's duration

    def path(self, stage: str, rank: int = 0) -> Path:
        """The checkpoint file of one fit pass (rank 0's, or another rank's)."""
        return self.folder / (f"{stage}.safetensors" if rank == 0 else f"{stage}.rank{rank}.safetensors")

    def restore(self, stage: str, fitter, n_batches: int):
        """Load the saved sums into `fitter` (rank 0 only: it adds every rank's file it finds and saves them as
        its own); returns the mask of the batches they cover (on the other ranks, none: the caller shares rank
        0's)."""
        import numpy as np

        covered = self._gather(stage, fitter, n_batches) if self.rank == 0 else None
        return np.zeros(n_batches, bool) if covered is None else covered.astype(bool)

    def _gather(self, stage: str, fitter, n_batches: int):
        """Rank 0: its own sums, plus those of other ranks' files over batches it does not cover yet; returns
        the mask they cover (None: nothing saved)."""
        from safetensors.torch import load_file

        covered = self._covered(self.path(stage), n_batches)
        if covered is not None:
            fitter.restore(load_file(str(self.path(stage))))
        others = sorted(self.folder.glob(f"{stage}.rank*.safetensors"))
        merged = False
        for path in others:
            theirs = self._covered(path, n_batches)
            if theirs is None or (covered is not None and (theirs & covered).any()):
                continue  # another job's, or already added to rank 0's file before a crash
            fitter.merge(load_file(str(path)))
            covered = theirs if covered is None else covered | theirs
            merged = True
        if merged:
            self.save(stage, fitter, covered)
        for path in others:
            path.unlink(missing_ok=True)
        return covered

    def _covered(self, path: Path, n_batches: int):
        """The mask saved in a checkpoint of this fit (None when absent or another fit's)."""
        meta = read_metadata(path)
        if meta.get("fingerprint") != self.fingerprint or meta.get("n_batches") != str(n_batches):
            return None
        from safetensors import safe_open

        with safe_open(str(path), framework="np") as f:
            return f.get_tensor(COVERED).astype(bool)

    def discard(self, stages) -> None:
        """Delete this rank's checkpoints of these passes: once the factors are saved they are never read again,
        and at 7B they take twice the factors' disk (float64 sums) until the run ends."""
        for stage in stages:
            self.path(stage, self.rank).unlink(missing_ok=True)

    def save(self, stage: str, fitter, covered) -> None:
        """Save this rank's sums now, covering the batches of the mask `covered`."""
        import numpy as np
        import torch
        from safetensors.torch import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous().cpu() for k, v in fitter.state().items()}
        tensors[COVERED] = torch.from_numpy(np.asarray(covered, np.uint8))
        meta = {"fingerprint": self.fingerprint, "n_batches": str(len(covered))}
        start = time.time()
        with atomic_path(self.path(stage, self.rank)) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        self._last = time.time()
        self._took = self._last - start

    def maybe_save(self, stage: str, fitter, covered) -> None:
        """Save when `every_seconds`, and SPACING times the last save's duration, have passed since it."""
        if time.time() - self._last >= max(self.every, SPACING * self._took):
            self.save(stage, fitter, covered)

    def remove_others(self, stage: str) -> None:
        """Drop the other ranks' files of a pass whose sums rank 0 now holds whole."""
        for path in self.folder.glob(f"{stage}.rank*.safetensors"):
            path.unlink(missing_ok=True)
