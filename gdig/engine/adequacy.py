"""Adequacy signals from the scoring model itself, no other model: how much of a target its source explains.

G-DIG and the surface signals see gross noise (a misaligned or untranslated pair); a poor translation of the
right sentence looks like a good one to them. Two cross-entropy signals that need only the model the run loads:

- conditional information: per target token, its loss with the source left out of the prompt minus its loss
  with it (Moore-Lewis' cross-entropy difference, conditioned on the source): what the source explains of the
  target. A free translation, an omission or a hallucination is explained less.
- dual conditional cross-entropy (Junczys-Dowmunt 2018, the best filter of WMT18's corpus filtering task): the
  forward loss H_f of the target given the source and the backward loss H_b of the source given the target (the
  same model asked for the reverse direction), scored -(|H_f - H_b| + (H_f + H_b) / 2): both directions likely,
  and alike.

Losses are means over target tokens (nats); both signals are "higher is better" like every signal. A record
without a separate source (instruction or chat records), or without a known source language for the reverse
prompt, gets NaN and a reason, never an error.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from gdig.engine.hooks import make_batches
from gdig.inputs.data import IGNORE_INDEX, Example, tokenize_example
from gdig.inputs.readers import language_name


@dataclasses.dataclass
class Variants:
    """The two prompts besides the example's own: the target without its source, and the reverse direction
    (None where a record cannot have one, with the reason)."""

    no_source: list[Example | None]
    reverse: list[Example | None]
    reasons: dict[str, int]  # why some have none -> how many


def variants(
    examples: Sequence[Example], template: str, src_lang: str | None = None, trg_lang: str | None = None
) -> Variants:
    """Build the no-source and reverse prompts of translation records with the run's template; `src_lang`,
    `trg_lang`: the run's default languages for records without them (the reverse prompt asks for the source's)."""
    no_source: list[Example | None] = []
    reverse: list[Example | None] = []
    reasons: dict[str, int] = {}
    for e in examples:
        if e.schema != "translation":
            _count(reasons, f"{e.schema} records have no separate source")
            no_source.append(None)
            reverse.append(None)
            continue
        rec = e.record
        back_lang = _name(rec.get("src_lang")) or _name(src_lang)
        fields = {"trg_lang": _name(rec.get("trg_lang")) or _name(trg_lang) or "", "src_lang": back_lang or ""}
        no_source.append(dataclasses.replace(e, prompt=template.format(src_text="", **fields)))
        if not back_lang:
            _count(reasons, "no source language for the reverse prompt (give src_lang or --src-lang)")
            reverse.append(None)
            continue
        back = {"src_text": e.target, "trg_lang": back_lang, "src_lang": fields["trg_lang"]}
        reverse.append(dataclasses.replace(e, prompt=template.format(**back), target=str(rec["src_text"])))
    return Variants(no_source, reverse, reasons)


def _name(code) -> str | None:
    return language_name(code) if isinstance(code, str) and code.strip() else None


def _count(reasons: dict[str, int], why: str) -> None:
    reasons[why] = reasons.get(why, 0) + 1


@torch.no_grad()
def token_losses(
    model: nn.Module,
    tokenizer,
    examples: Sequence[Example | None],
    max_length: int,
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
    token_budget: int | None = None,
    padding_side: str = "right",
) -> list[np.ndarray | None]:
    """Each example's per-target-token loss (nats, float32), by plain forward passes in batches of similar
    length (the run's batching rule); None stays None. `progress(n)` after each batch of n examples."""
    present = [i for i, e in enumerate(examples) if e is not None]
    toks = {i: tokenize_example(tokenizer, examples[i], max_length) for i in present}
    listed = [toks.get(i) for i in range(len(examples))]
    order = sorted(present, key=lambda i: -len(toks[i].input_ids))
    device = next(model.parameters()).device
    out: list[np.ndarray | None] = [None] * len(examples)
    for batch in make_batches(listed, order, tokenizer.pad_token_id, batch_size, token_budget, padding_side):
        logits = model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device)).logits
        labels = batch.labels[:, 1:].to(device)
        loss = nn.functional.cross_entropy(
            logits[:, :-1].float().transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none"
        )
        for row, i in enumerate(batch.index):
            out[i] = loss[row][labels[row] != IGNORE_INDEX].cpu().numpy().astype(np.float32)
        if progress:
            progress(len(batch.index))
    return out


def conditional_information(with_source: np.ndarray | None, without: np.ndarray | None) -> float:
    """Mean over the target tokens both prompts kept (a truncation may cut one short) of loss without the
    source minus loss with it; NaN when either is missing or empty."""
    if with_source is None or without is None:
        return float("nan")
    n = min(len(with_source), len(without))
    return float(np.mean(without[:n] - with_source[:n])) if n else float("nan")


def dual_xent(forward: np.ndarray | None, backward: np.ndarray | None) -> float:
    """-(|H_f - H_b| + (H_f + H_b) / 2) of the mean token losses; NaN when either is missing or empty."""
    if forward is None or backward is None or not len(forward) or not len(backward):
        return float("nan")
    h_f, h_b = float(forward.mean()), float(backward.mean())
    return -(abs(h_f - h_b) + (h_f + h_b) / 2)


def adequacy_signals(
    model: nn.Module,
    tokenizer,
    examples: Sequence[Example],
    template: str,
    max_length: int,
    src_lang: str | None = None,
    trg_lang: str | None = None,
    batch_size: int = 8,
    forward: list[np.ndarray | None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    token_budget: int | None = None,
    padding_side: str = "right",
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Both signals per example (`conditional_information`, `dual_xent`) and the reasons some are NaN. `forward`: the
    examples' own per-token losses where the caller has them already. `progress(done, total)` over the
    forward passes of all three prompts."""
    v = variants(examples, template, src_lang, trg_lang)
    passes = ([] if forward is not None else [list(examples)]) + [v.no_source, v.reverse]
    total, done = sum(e is not None for p in passes for e in p), 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, total)

    batching = {"token_budget": token_budget, "padding_side": padding_side}
    losses = [token_losses(model, tokenizer, p, max_length, batch_size, advance, **batching) for p in passes]
    forward = forward if forward is not None else losses.pop(0)
    without, backward = losses
    signals = {
        "conditional_information": np.array(
            [conditional_information(f, w) for f, w in zip(forward, without, strict=True)]
        ),
        "dual_xent": np.array([dual_xent(f, b) for f, b in zip(forward, backward, strict=True)]),
    }
    cut = int(sum(np.isnan(x) for x in signals["conditional_information"])) - sum(e is None for e in v.no_source)
    if cut:  # a prompt that fills max_length leaves no target token to compare
        v.reasons["no target token within --max-length"] = cut
    return signals, v.reasons
