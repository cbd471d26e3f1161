"""The memory estimate that decides whether the curvature pass's captures are kept for reuse."""

from __future__ import annotations

import torch

from gdig.memory import captures_fit, free_memory_mb


def test_captures_fit_counts_padded_tokens_per_batch_with_a_margin():
    lengths = [10, 8, 6, 2]  # batches of 2 pad to 10 and 6: 2*10 + 2*6 = 32 tokens
    per_token = 2**20  # 1 MiB per token makes the budget read in tokens
    assert captures_fit(lengths, per_token, batch_size=2, by_tokens=False, budget_mb=32 * 1.1)
    assert not captures_fit(lengths, per_token, batch_size=2, by_tokens=False, budget_mb=32)
    assert captures_fit(lengths, per_token, batch_size=2, by_tokens=True, budget_mb=26 * 1.1)  # unpadded: 26
    assert not captures_fit(lengths, per_token, batch_size=4, by_tokens=False, budget_mb=39)  # 4 * 10 * 1.1 = 44


def test_free_memory_is_a_positive_number_of_mib_on_this_machine():
    assert 0 < free_memory_mb(torch.device("cpu")) < 2**30
