"""Evaluation helpers used by the demo and the benchmarks: detection AUROC, sacrebleu metrics, held-out loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gdig.engine.hooks import collate, per_example_loss
from gdig.inputs.data import load_dataset, tokenize_dataset
from gdig.inputs.model import load_model
from gdig.pipeline.metrics import detection_auroc, heldout_loss, translation_metrics


def test_detection_auroc_overall_and_per_kind():
    corrupted = np.array([False, False, False, True, True])
    kinds = np.array(["", "", "", "truncated", "misaligned"])
    good = np.array([0.9, 0.8, 0.1, 0.5, 0.0])  # truncated beats one clean pair, misaligned beats none
    out = detection_auroc(good, corrupted, kinds)
    assert out["per_kind"] == {"misaligned": 1.0, "truncated": pytest.approx(2 / 3)}
    assert out["auroc"] == pytest.approx(5 / 6)
    assert detection_auroc(-good, corrupted)["auroc"] == pytest.approx(1 - 5 / 6)


def test_translation_metrics_perfect_and_wrong():
    refs = ["Der Hund läuft schnell nach Hause.", "Die Katze schläft."]
    perfect = translation_metrics(refs, refs)
    assert perfect["chrf"] == pytest.approx(100) and perfect["bleu"] == pytest.approx(100)
    wrong = translation_metrics(["xyz", "qqq"], refs)
    assert wrong["chrf"] < 10 and wrong["bleu"] < 1


def test_heldout_loss_is_the_mean_per_example_loss(llama_dir, data_files):
    cands, _ = data_files
    model, tok = load_model(str(llama_dir), "cpu", "float32")
    toks, _ = tokenize_dataset(tok, load_dataset(cands), 512)
    per_example = []
    for i, t in enumerate(toks):  # one example at a time: no padding involved
        b = collate([t], [i], tok.pad_token_id)
        with torch.no_grad():
            per_example.append(float(per_example_loss(model(input_ids=b.input_ids).logits, b.labels)[0][0]))
    expected = float(np.mean(per_example))
    assert heldout_loss(llama_dir, cands, batch_size=5, device="cpu") == pytest.approx(expected, rel=1e-5)
