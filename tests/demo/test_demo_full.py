"""The default demo, built as `gdig demo` builds it (about 2 minutes on 2 CPU cores, hence slow): the figures the
README reports. Marked slow; CI runs it after the default suite."""

from __future__ import annotations

import pytest

from gdig.demo import DemoConfig, build_demo


@pytest.mark.slow
def test_default_demo_separates_corrupted_pairs(tmp_path):
    _, report = build_demo(DemoConfig(out=str(tmp_path / "demo"), cache=str(tmp_path / "cache")))
    auroc = report["auroc"]
    # Measured 0.902 here (0.902-0.924 over four seeds), bitwise the same with 1 or 2 threads. The bound leaves
    # room for other CPUs' float kernels, which can change training in the last bits; the README gives the figure.
    assert auroc["mean_influence"] >= 0.89
    assert auroc["mean_influence"] >= auroc["low_loss"] + 0.04  # G-DIG beats the loss heuristic (0.828)
    assert min(report["auroc_mean_influence_per_kind"].values()) >= 0.7
    assert report["chrf"] >= 20  # the model translates (28.3 measured)
