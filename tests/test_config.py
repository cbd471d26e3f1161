"""Settings validation: impossible settings are refused before any work, naming the flag to change."""

from __future__ import annotations

import pytest

from gdig.config import DataConfig, ScoreConfig
from gdig.pipeline.finetuning import FinetuneConfig

BASE = {"model": "m", "candidates": "c", "seeds": "s", "out": "o"}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"hessian": "fisher"}, "--hessian must be one of ekfac, kfac, diagonal, identity, got .fisher."),
        ({"normalize": "cosine"}, "--normalize must be one of"),
        ({"damping": -1.0}, "--damping must be >= 0"),
        ({"damping_relative": 0.0}, "--damping-relative R > 0"),
        ({"batch_size": 0}, "--batch-size must be >= 1"),
        ({"chunk_size": 0}, "--chunk-size must be >= 1"),
        ({"padding_side": "middle"}, "padding side must be left or right"),
        ({"checkpoint_seconds": -1.0}, "--checkpoint-seconds must be >= 0"),
        ({"fit_cache_mb": -5}, "--fit-cache-mb must be >= 0"),
        ({"fit_examples": 0}, "--fit-examples must be >= 1"),
        ({"seed_rank": 0}, "--seed-rank must be >= 1"),
        ({"data": DataConfig(max_length=1)}, "--max-length must be >= 2"),
    ],
)
def test_impossible_score_settings_are_refused_with_the_flag(settings, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        ScoreConfig(**BASE, **settings)


def test_absolute_damping_alone_is_accepted_and_settings_round_trip():
    cfg = ScoreConfig(**BASE, damping=0.01, damping_relative=None, data=DataConfig(trg_lang="German"))
    back = ScoreConfig.from_dict(cfg.to_dict() | {"setting_of_a_newer_version": 1})
    assert back == cfg and isinstance(back.data, DataConfig) and back.data.trg_lang == "German"


def test_curvature_fingerprint_settings_ignore_what_does_not_change_the_factors():
    a, b = ScoreConfig(**BASE), ScoreConfig(**BASE, normalize="none", sketch_dim=64, batch_size=2)
    assert a.curvature_settings() == b.curvature_settings()
    assert a.curvature_settings() != ScoreConfig(**BASE, fit_examples=10).curvature_settings()


@pytest.mark.parametrize(("settings", "message"), [({"batch_size": 0}, "--batch-size"), ({"lr": 0.0}, "--lr")])
def test_impossible_finetune_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        FinetuneConfig("m", "d", "o", **settings)
