"""Resumable curvature fits: a fit pass's partial sums saved in partial/ with the number of batches they
cover (safetensors, written atomically)."""

from __future__ import annotations

import time
from pathlib import Path

from gdig.atomic import atomic_path
from gdig.rundir.layout import read_metadata


class FitCheckpoint:
    """A fit pass's partial sums saved with the number of batches they cover (safetensors, written atomically):
    every `every_seconds`, when the pass is cancelled, and when a pass that another builds on completes. A
    resumed pass restores them, skips those batches, and ends with the same sums bit for bit as an uninterrupted
    one."""

    def __init__(self, folder: str | Path, fingerprint: str, every_seconds: float = 60.0):
        self.folder, self.fingerprint, self.every = Path(folder), fingerprint, every_seconds
        self._last = time.time()

    def path(self, stage: str) -> Path:
        """The checkpoint file of one fit pass."""
        return self.folder / f"{stage}.safetensors"

    def restore(self, stage: str, fitter) -> int:
        """Load the saved sums into `fitter`; returns how many batches they cover (0 when none match)."""
        path = self.path(stage)
        meta = read_metadata(path)
        if meta.get("fingerprint") != self.fingerprint:
            return 0
        from safetensors.torch import load_file

        fitter.restore(load_file(str(path)))
        return int(meta["batches"])

    def save(self, stage: str, fitter, batches: int) -> None:
        """Save the fitter's sums now, covering the first `batches` batches."""
        from safetensors.torch import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous().cpu() for k, v in fitter.state().items()}
        with atomic_path(self.path(stage)) as tmp:
            save_file(tensors, str(tmp), metadata={"fingerprint": self.fingerprint, "batches": str(batches)})
        self._last = time.time()

    def maybe_save(self, stage: str, fitter, batches: int) -> None:
        """Save when `every_seconds` have passed since the last save."""
        if time.time() - self._last >= self.every:
            self.save(stage, fitter, batches)
