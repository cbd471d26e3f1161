"""Model loading helpers: tracked modules by regex (Linear and GPT-2's Conv1D), fingerprints, tokenizers."""

from __future__ import annotations

import pytest
import torch

from gdig.config import DEFAULT_MODULES
from gdig.demo.tiny import build_tiny_model
from gdig.model import find_tracked_modules, model_fingerprint, prepare_tokenizer


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
