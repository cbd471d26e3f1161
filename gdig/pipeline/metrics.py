"""How good a fine-tuned translation model is: greedy translations scored with sacrebleu (chrF, BLEU) and the
mean held-out target-token loss. Used by the demo and the benchmarks (downstream quality of a selection)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gdig.engine.hooks import collate, per_example_loss
from gdig.inputs.data import load_dataset, tokenize_dataset
from gdig.inputs.model import load_model


def translate(model, tok, ds, batch_size: int, max_new_tokens: int, on_batch=None) -> list[str]:
    """Greedy translations of every prompt of `ds`; on_batch(examples done) after each batch."""
    side, tok.padding_side = tok.padding_side, "left"  # generation continues after the prompt
    hyps: list[str] = []
    for i in range(0, len(ds), batch_size):
        prompts = [e.prompt for e in ds.examples[i : i + batch_size]]
        enc = tok(prompts, return_tensors="pt", padding=True).to(model.device)
        with torch.no_grad():
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
        hyps += [t.strip() for t in tok.batch_decode(out[:, enc.input_ids.shape[1] :], skip_special_tokens=True)]
        if on_batch is not None:
            on_batch(len(hyps))
    tok.padding_side = side
    return hyps


def translation_metrics(hyps: list[str], refs: list[str]) -> dict[str, float]:
    """Corpus chrF and BLEU (sacrebleu defaults: chrF2, BLEU 13a)."""
    import sacrebleu

    return {
        "chrf": float(sacrebleu.corpus_chrf(hyps, [refs]).score),
        "bleu": float(sacrebleu.corpus_bleu(hyps, [refs]).score),
    }


def heldout_loss(
    model_dir: str | Path, data_file: str | Path, batch_size: int = 32, max_length: int = 512, device: str = "auto"
) -> float:
    """Mean over examples of each example's mean target-token loss (the loss that fine-tuning minimises)."""
    model, tok = load_model(str(model_dir), device, "float32")
    return _mean_loss(model, tok, load_dataset(data_file), batch_size, max_length)


def _mean_loss(model, tok, ds, batch_size: int, max_length: int) -> float:
    return float(example_losses(model, tok, ds, batch_size, max_length).mean())


def example_losses(model, tok, ds, batch_size: int = 32, max_length: int = 512) -> np.ndarray:
    """Each example's mean target-token loss (for a heuristic such as the base model's perplexity of a target)."""
    toks, _ = tokenize_dataset(tok, ds, max_length)
    losses = []
    for i in range(0, len(toks), batch_size):
        idx = list(range(i, min(i + batch_size, len(toks))))
        b = collate([toks[j] for j in idx], idx, tok.pad_token_id)
        with torch.no_grad():
            logits = model(
                input_ids=b.input_ids.to(model.device),
                attention_mask=b.attention_mask.to(model.device),
                use_cache=False,
            ).logits
        losses.append(per_example_loss(logits, b.labels.to(model.device))[0].cpu().numpy())
    return np.concatenate(losses)


def evaluate_model(model_dir: str | Path, test_file: str | Path, max_new_tokens: int = 64) -> dict:
    """chrF, BLEU, held-out loss and a few sample translations (the model and the file are read once)."""
    model, tok = load_model(str(model_dir), "auto", "float32")
    ds = load_dataset(test_file)
    hyps = translate(model, tok, ds, 32, max_new_tokens)
    refs = [e.target for e in ds.examples]
    samples = [
        {"source": e.record.get("src_text", ""), "reference": ref, "output": h}
        for e, ref, h in list(zip(ds.examples, refs, hyps, strict=True))[:5]
    ]
    return translation_metrics(hyps, refs) | {"loss": _mean_loss(model, tok, ds, 32, 512), "samples": samples}


def detection_auroc(good: np.ndarray, corrupted: np.ndarray, kinds: np.ndarray | None = None) -> dict:
    """How well a score (higher = better pair) separates clean from corrupted pairs: the AUROC over all pairs
    and, with `kinds` (the corruption of each corrupted row), one AUROC per kind against all clean pairs."""
    from sklearn.metrics import roc_auc_score

    good, corrupted = np.asarray(good, np.float64), np.asarray(corrupted, bool)
    out = {"auroc": float(roc_auc_score(~corrupted, good)), "per_kind": {}}
    if kinds is not None:
        for kind in sorted({k for k, c in zip(kinds, corrupted, strict=True) if c}):
            rows = (np.asarray(kinds) == kind) | ~corrupted
            out["per_kind"][kind] = float(roc_auc_score(~corrupted[rows], good[rows]))
    return out
