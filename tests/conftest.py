"""Shared fixtures: a tiny tokenizer, tiny models of every family, small translation files."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from gdig.atomic import write_jsonl  # noqa: F401 - the tests write their data files with it
from gdig.demo.tiny import build_tiny_model, train_tokenizer

torch.set_num_threads(2)

WORDS_EN = [
    "the",
    "cat",
    "dog",
    "house",
    "tree",
    "sees",
    "runs",
    "big",
    "small",
    "red",
    "green",
    "river",
    "sun",
    "moon",
    "eats",
    "water",
]
WORDS_DE = [
    "die",
    "Katze",
    "Hund",
    "Haus",
    "Baum",
    "sieht",
    "läuft",
    "groß",
    "klein",
    "rot",
    "grün",
    "Fluss",
    "Sonne",
    "Mond",
    "isst",
    "Wasser",
]


def make_pairs(n: int, seed: int = 0, min_words: int = 2, max_words: int = 7) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.randint(min_words, max_words)
        idx = [rng.randrange(len(WORDS_EN)) for _ in range(k)]
        out.append(
            {
                "src_text": " ".join(WORDS_EN[i] for i in idx),
                "trg_text": " ".join(WORDS_DE[i] for i in idx),
                "src_lang": "en",
                "trg_lang": "de",
            }
        )
    return out


@pytest.fixture(scope="session")
def tokenizer():
    texts = [r["src_text"] + " " + r["trg_text"] for r in make_pairs(200, seed=1)]
    texts.append('Translate the following text into German\n\nText:\n""\n\n')
    return train_tokenizer(texts, vocab_size=160)


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory, tokenizer) -> Path:
    out = tmp_path_factory.mktemp("llama")
    build_tiny_model("llama", tokenizer, out)
    return out


@pytest.fixture()
def data_files(tmp_path) -> tuple[Path, Path]:
    cands = write_jsonl(tmp_path / "cands.jsonl", make_pairs(24, seed=2))
    seeds = write_jsonl(tmp_path / "seeds.jsonl", make_pairs(5, seed=3))
    return cands, seeds


@pytest.fixture(scope="module")
def model(tokenizer):
    """The maths tests' tiny Llama (hidden 16, MLP 32, 2 layers)."""
    return build_tiny_model("llama", tokenizer, hidden=16, ffn=32, heads=2)


def lora_model(base):
    """`base` with LoRA adapters (unmerged) whose B matrices are not zero, so both A and B have gradients."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj", "down_proj"], lora_dropout=0.0)
    model = get_peft_model(base, lora)
    gen = torch.Generator().manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model.eval()
