"""The pretrained benchmark's small pure parts (no model, no shared data): run specs, the default run, and the
downstream verdict against the acceptance's one standard deviation."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.bench_pretrained import PretrainedConfig, default_run, downstream_lines, score_config


def _files(tmp_path: Path) -> dict[str, Path]:
    return {"pool": tmp_path / "pool.jsonl", "seeds": tmp_path / "seeds.jsonl"}


def test_run_specs_pick_modules_hessian_and_seeds(tmp_path):
    base, tuned, cfg = tmp_path / "base", tmp_path / "tuned", PretrainedConfig()
    lora = score_config(cfg, "lora ekfac", base, tuned, _files(tmp_path), tmp_path / "out")
    assert (lora.model, lora.adapter, lora.hessian) == (str(base), str(tuned / "adapter"), "ekfac")
    assert lora.seeds == str(tmp_path / "seeds.jsonl")  # n_seeds FLORES seeds: the file the pool came with
    mlp = score_config(cfg, "mlp-top kfac", base, tuned, _files(tmp_path), tmp_path / "out")
    assert (mlp.model, mlp.hessian, mlp.adapter) == (str(tuned), "kfac", None)
    assert "mlp" in mlp.modules
    attn = score_config(cfg, "attn-top ekfac", base, tuned, _files(tmp_path), tmp_path / "out")
    assert (attn.model, attn.adapter) == (str(tuned), None) and "self_attn" in attn.modules


@pytest.mark.parametrize("spec", ["attention ekfac", "lora ekfac domian", "lora ekfac s=8 s=16"])
def test_unknown_run_specs_are_refused(tmp_path, spec):
    with pytest.raises(ValueError, match="unknown run"):
        score_config(PretrainedConfig(), spec, tmp_path, tmp_path, _files(tmp_path), tmp_path / "out")


def test_default_run_prefers_lora_ekfac_with_domain_seeds():
    assert default_run(dict.fromkeys(["lora kfac", "lora ekfac", "lora ekfac domain s=256", "lora ekfac domain"])) == (
        "lora ekfac domain s=256"
    )
    assert default_run(dict.fromkeys(["lora kfac", "lora ekfac s=128"])) == "lora ekfac s=128"
    assert default_run(dict.fromkeys(["mlp-top ekfac"])) == "mlp-top ekfac"


def test_downstream_lines_show_each_selection_and_the_verdicts():
    from gdig.pipeline.evaluation_report import paired_difference, verdict

    def per(chrf):
        return {"n_train": 200} | {m: {"mean": v, "sd": 0.5} for m, v in (("chrf", chrf), ("bleu", 3.0), ("loss", 2.9))}

    pair = paired_difference([20.0, 21.0, 20.5], [23.0, 23.5, 24.0]) | {"a": "random", "b": "gdig-default"}
    report = {
        "settings": {"epochs": 1.0, "lr": 0.001, "max_new_tokens": 96},
        "seeds": [0, 1, 2],
        "n_test": 128,
        "names": ["gdig-default", "random"],
        "per_selection": {"gdig-default": per(23.5), "random": per(20.5)},
        "shares": {"gdig-default": {"corrupted": 0.01, "opennmt": 0.05}, "random": {"corrupted": 0.2, "opennmt": 0.1}},
        "verdicts": [verdict(pair | {"metric": "chrf"})],
    }
    lines = downstream_lines(report, 200, 340)
    assert "| gdig-default | 0.010 | 0.050 | 23.50 ± 0.50 | 3.00 ± 0.50 | 2.90 ± 0.50 |" in lines
    assert lines[-1].startswith("- chrF: gdig-default - random = +3.000") and lines[-1].endswith(
        "gdig-default is better"
    )
