"""The pretrained benchmark's small pure parts (no model, no shared data): run specs, the default run, and the
downstream verdict against the acceptance's one standard deviation."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.bench_pretrained import PretrainedConfig, default_run, margins, score_config


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


def test_margins_compare_with_the_larger_standard_deviation():
    def row(method, flores, wmt):
        return {"method": method, "test-flores-chrf": flores, "test-wmt-chrf": wmt}

    summary = [
        row("G-DIG default rule (+ signals), lora ekfac domain s=256", [24.0, 0.5], [22.0, 0.2]),
        row("length ratio", [23.0, 0.8], [21.5, 0.6]),
        row("random", [20.0, 1.0], [18.0, 1.0]),
    ]
    lines = margins(summary)
    assert lines[0].endswith("FLORES chrF: +1.00 (more than one sd, 0.80)")
    assert lines[1].endswith("WMT22 chrF: +0.50 (less than one sd, 0.60)")
    assert len(lines) == 4 and all("more" in x for x in lines[2:])
    assert margins(summary[1:]) == []  # no default rule measured: nothing to say
