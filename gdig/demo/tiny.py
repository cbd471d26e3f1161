"""Small models and tokenizers built offline from a config: for tests, the demo, and benchmarks.

Nothing here downloads anything; every model is saved as a normal Hugging Face folder and loaded back through
the same `from_pretrained` path as a real model.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

ARCHITECTURES = ("llama", "qwen2", "mistral", "gpt2", "bloom", "gpt_neox", "opt", "gemma")
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512, with_pad: bool = True):
    """A byte-level BPE tokenizer trained on `texts`, wrapped for transformers (adds <s> at the start)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    kwargs = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    if with_pad:
        kwargs["pad_token"] = "<pad>"
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)


def tiny_config(
    arch: str,
    vocab_size: int,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    ffn: int = 64,
    max_positions: int = 256,
    bos: int = 1,
    eos: int = 2,
    pad: int | None = 3,
):
    """A config of the named family with small sizes (the names of size fields differ between families)."""
    from transformers import AutoConfig

    base = AutoConfig.for_model(arch)
    sizes = {
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": max(1, heads // 2),
        "head_dim": hidden // heads,
        "n_embd": hidden,
        "n_layer": layers,
        "n_head": heads,
        "n_inner": ffn,
        "ffn_dim": ffn,
        "word_embed_proj_dim": hidden,
        "n_positions": max_positions,
        "max_position_embeddings": max_positions,
    }
    kwargs = {k: v for k, v in sizes.items() if hasattr(base, k) or k == "n_inner"}
    if arch == "gpt_neox":
        kwargs["intermediate_size"] = ffn
    return AutoConfig.for_model(
        arch,
        vocab_size=vocab_size,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
        tie_word_embeddings=False,
        **kwargs,
    )


def build_tiny_model(arch: str, tokenizer, out: str | Path | None = None, seed: int = 0, **sizes):
    """A randomly initialised model of family `arch` sized for `tokenizer`; saved to `out` when given."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = tiny_config(
        arch,
        len(tokenizer),
        bos=tokenizer.bos_token_id,
        eos=tokenizer.eos_token_id,
        pad=tokenizer.pad_token_id,
        **sizes,
    )
    model = AutoModelForCausalLM.from_config(cfg)
    model.eval()
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    return model


def init_scratch_model(
    texts: Iterable[str], out: str | Path, vocab_size: int, seed: int = 0, arch: str = "llama", **sizes
) -> Path:
    """A tokenizer trained on `texts` and a randomly initialised model for it, saved as one model folder: the
    starting point of the demo and benchmark models (trained afterwards by `gdig finetune`)."""
    tok = train_tokenizer(texts, vocab_size=vocab_size)
    build_tiny_model(arch, tok, out, seed=seed, **sizes)
    return Path(out)
