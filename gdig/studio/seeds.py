"""The Seeds page's table: each seed with its text, loss, how many candidates help it, how well it agrees with
the other seeds, and flags for the ones that look unreliable. The trusted set is the foundation of the method
(the benchmarks' strongest lever), and a noisy seed pulls every score towards its noise."""

from __future__ import annotations

import numpy as np
import pandas as pd

from gdig.rundir.results import RunResults

AGREEMENT_ROWS = 20_000  # candidates read to compare the seed columns (a fixed sample; a second at any size)
FLAGS = {
    "high loss": "the step-1 model finds its target unusually hard (a loss above the seeds' upper Tukey fence)",
    "helped by few": "unusually few candidates help it (a share below the seeds' lower Tukey fence)",
    "odd one out": "its column agrees unusually little with the mean of the other seeds (lower Tukey fence)",
}


def upper_fence(x: np.ndarray) -> float:
    """Q3 + 1.5 IQR: above it a value is an outlier (Tukey)."""
    q1, q3 = np.percentile(x, [25, 75])
    return float(q3 + 1.5 * (q3 - q1))


def lower_fence(x: np.ndarray) -> float:
    """Q1 - 1.5 IQR: below it a value is an outlier (Tukey)."""
    q1, q3 = np.percentile(x, [25, 75])
    return float(q1 - 1.5 * (q3 - q1))


def column_agreement(influence: np.ndarray, rows: int = AGREEMENT_ROWS, random_state: int = 0) -> np.ndarray:
    """Per seed column, the correlation over candidates of its scores with the mean of the other columns."""
    n, m = influence.shape
    if m < 2:
        return np.ones(m)
    pick = np.sort(np.random.default_rng(random_state).choice(n, min(n, rows), replace=False))
    x = np.asarray(influence[pick], np.float64)
    others = (x.sum(1, keepdims=True) - x) / (m - 1)
    xc, oc = x - x.mean(0), others - others.mean(0)
    den = np.sqrt((xc**2).sum(0) * (oc**2).sum(0))
    return np.divide((xc * oc).sum(0), den, out=np.zeros(m), where=den > 0)


def seed_flags(loss: np.ndarray, helped: np.ndarray, agreement: np.ndarray) -> list[list[str]]:
    """The flags of each seed (names from FLAGS), by Tukey fences over the seed set itself."""
    high, few, odd = upper_fence(loss), lower_fence(helped), lower_fence(agreement)
    return [
        [name for name, hit in (("high loss", lo > high), ("helped by few", h < few), ("odd one out", a < odd)) if hit]
        for lo, h, a in zip(loss, helped, agreement, strict=True)
    ]


def seed_review(run: RunResults) -> pd.DataFrame:
    """One row per seed of a run scored one seed per column: id, texts, loss, share helped, agreement, how it
    was scored (exact or from the index) and its flags, in the run's column order."""
    seeds = run.seeds
    if len(seeds) != run.influence.shape[1]:
        raise ValueError("this run averages seeds in groups (--seed-batch): its seeds cannot be reviewed one by one")
    helped, mean = run.column_statistics
    agreement = column_agreement(run.influence)
    loss = seeds["loss"].to_numpy(np.float64)
    source = seeds["src_text"] if "src_text" in seeds else seeds["prompt"]
    return pd.DataFrame(
        {
            "id": seeds["id"].astype(str).to_numpy(),
            "flags": [", ".join(f) for f in seed_flags(loss, helped, agreement)],
            "loss": loss,
            "helped by": helped,
            "agreement": agreement,
            "mean influence": mean,
            "source": source.astype(str).to_numpy(),
            "target": seeds["target"].astype(str).to_numpy(),
            "scored": seeds["scored_from"].to_numpy() if "scored_from" in seeds else "exact",
        }
    )
