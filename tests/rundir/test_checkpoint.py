"""Periodic fit checkpoints (gdig.rundir.checkpoint): every --checkpoint-seconds, and never closer than SPACING
times the last save's duration, so that saving the float64 sums costs at most 5% of a fit however large."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from gdig.rundir import checkpoint as checkpoint_module
from gdig.rundir.checkpoint import SPACING, FitCheckpoint


class _Sums:
    def state(self):
        return {"s": torch.ones(3)}


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_periodic_saves_are_spaced_by_the_period_and_by_the_last_saves_duration(tmp_path, monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(checkpoint_module.time, "time", clock)
    saves = []
    atomic_path = checkpoint_module.atomic_path

    @contextmanager
    def slow_first_write(path):
        saves.append(clock.now)
        with atomic_path(path) as tmp:
            yield tmp
        clock.now += 10.0 if len(saves) == 1 else 0.0  # the first save takes 10 s, later ones no time

    monkeypatch.setattr(checkpoint_module, "atomic_path", slow_first_write)
    ckpt = FitCheckpoint(tmp_path, "fp", every_seconds=60.0, rank=0)
    covered = np.zeros(4, bool)
    for _ in range(40):  # a batch every 10 s
        clock.now += 10.0
        ckpt.maybe_save("fit_covariance", _Sums(), covered)
    assert saves[0] == 1060.0  # the period
    assert saves[1] - (saves[0] + 10.0) >= SPACING * 10.0  # 200 s after a save that took 10 s, not 60
    assert all(b - a >= 60.0 for a, b in zip(saves[1:], saves[2:], strict=False))  # quick saves: the period again
    assert (tmp_path / "fit_covariance.safetensors").exists()
