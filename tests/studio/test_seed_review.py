"""The Seeds page's table (gdig.studio.seeds): flags by Tukey fences, and agreement of a seed column with the others."""

from __future__ import annotations

import numpy as np

from gdig.studio.seeds import column_agreement, lower_fence, seed_flags, upper_fence


def test_fences_are_tukeys():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])  # Q1 2, Q3 4, IQR 2
    assert upper_fence(x) == 7.0 and lower_fence(x) == -1.0


def test_a_seed_unlike_the_others_is_the_odd_one_out():
    rng = np.random.default_rng(0)
    shared = rng.standard_normal(500)
    influence = shared[:, None] + 0.3 * rng.standard_normal((500, 12))
    influence[:, 5] = rng.standard_normal(500)  # seed 5 follows none of the others
    agreement = column_agreement(influence)
    assert agreement[5] < 0.2 < agreement[np.arange(12) != 5].min()
    flags = seed_flags(np.ones(12), np.full(12, 0.5), agreement)
    assert [i for i, f in enumerate(flags) if f] == [5] and flags[5] == ["odd one out"]


def test_high_loss_and_few_helpers_are_flagged_and_ordinary_seeds_are_not():
    loss = np.array([1.0, 1.1, 0.9, 1.05, 0.95, 1.0, 4.0, 1.02])
    helped = np.array([0.6, 0.62, 0.58, 0.61, 0.05, 0.6, 0.59, 0.6])
    flags = seed_flags(loss, helped, np.ones(8))
    assert flags[6] == ["high loss"] and flags[4] == ["helped by few"]
    assert sum(bool(f) for f in flags) == 2


def test_one_seed_agrees_with_itself():
    assert column_agreement(np.ones((10, 1))).tolist() == [1.0]
