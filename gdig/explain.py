"""Why a candidate was kept or rejected (DESIGN section 1): rank and decision, the seeds it helps and hurts
most, its cluster and nearest neighbours, its loss, and token-level influence c_t = sum_modules g_t^T V a_t."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from gdig.results import RunResults
from gdig.select import normalise_rows


@dataclass
class Explanation:
    index: int
    id: str
    rank: int  # 1 = highest mean influence
    n: int
    kept: bool
    frac_helped: float
    mean_influence: float
    loss: float
    n_tokens: int
    cluster: int | None
    helps: pd.DataFrame  # seeds it helps most: seed, influence, source, target
    hurts: pd.DataFrame
    neighbours: pd.DataFrame  # nearest candidates by sketch cosine


def _seed_table(run: RunResults, cols: np.ndarray, values: np.ndarray) -> pd.DataFrame:
    seeds = run.seeds
    batch = run.config.get("settings", {}).get("seed_batch", 1)
    rows = []
    for c, v in zip(cols.tolist(), values.tolist(), strict=True):
        members = seeds.iloc[c * batch : (c + 1) * batch]
        rows.append({"seed": ", ".join(members["id"].astype(str)), "influence": v,
                     "source": " / ".join(members["prompt"].astype(str)),
                     "target": " / ".join(members["target"].astype(str))})  # fmt: skip
    return pd.DataFrame(rows, columns=["seed", "influence", "source", "target"])


def explain(run: RunResults, index: int, kept: np.ndarray | None = None, labels: np.ndarray | None = None,
            k: int = 5) -> Explanation:  # fmt: skip
    row = run.influence[index]
    order = np.argsort(-row, kind="stable")
    helps = order[:k][row[order[:k]] > 0]
    hurts = order[::-1][:k][row[order[::-1][:k]] < 0]
    mean = run.mean_influence
    rank = int((mean > mean[index]).sum()) + 1
    x = normalise_rows(run.sketch)
    sims = x @ x[index]
    sims[index] = -np.inf
    nn = np.argsort(-sims, kind="stable")[:k]
    cand = run.candidates
    neighbours = pd.DataFrame({"id": cand["id"].iloc[nn].astype(str).to_numpy(), "similarity": sims[nn],
                               "target": cand["target"].iloc[nn].astype(str).to_numpy()})  # fmt: skip
    cluster = None if labels is None or labels[index] < 0 else int(labels[index])
    return Explanation(
        index=index, id=str(cand["id"].iloc[index]), rank=rank, n=run.n,
        kept=bool(kept[index]) if kept is not None else bool(run.frac_helped[index] >= 1.0),
        frac_helped=float(run.frac_helped[index]), mean_influence=float(mean[index]),
        loss=float(cand["loss"].iloc[index]), n_tokens=int(cand["n_tokens"].iloc[index]), cluster=cluster,
        helps=_seed_table(run, helps, row[helps]), hurts=_seed_table(run, hurts, row[hurts]), neighbours=neighbours,
    )  # fmt: skip


# -- token-level influence -------------------------------------------------------------------------------------


@dataclass
class TokenInfluence:
    tokens: list[str]
    contributions: np.ndarray  # (T,), sums to `total`
    n_prompt: int  # the first n_prompt positions are the prompt
    total: float


def token_influence(run: RunResults, index: int, model, tokenizer, seed: int | None = None) -> TokenInfluence:
    """Contribution of each position of candidate `index` to its score on one seed column (or the seed mean),
    in the run's normalisation. Needs the run's model (same weights)."""
    import torch

    from gdig.data import Example, tokenize_example
    from gdig.hooks import GradientCapture, collate
    from gdig.influence import token_contributions
    from gdig.model import find_tracked_modules, prepare_tokenizer
    from gdig.run import load_seed_gradients

    settings = run.config["settings"]
    prepare_tokenizer(tokenizer, model.get_input_embeddings().num_embeddings)
    c = run.candidates.iloc[index]
    ex = Example(str(c["id"]), str(c["prompt"]), str(c["target"]), {}, "")
    tok = tokenize_example(tokenizer, ex, settings["data"]["max_length"])
    device = next(model.parameters()).device
    seeds, _ = load_seed_gradients(Path(run.path) / "seed_grads.safetensors", device)
    with GradientCapture(model, find_tracked_modules(model, settings["modules"])) as cap:
        got = cap.run(collate([tok], [index], tokenizer.pad_token_id))
    with torch.no_grad():
        contrib = token_contributions(got, seeds, seed).double().cpu().numpy()
    contrib /= _normaliser(run, index, seeds.self_influence.cpu().numpy(), seed, settings["normalize"])
    tokens = [tokenizer.decode([t]) for t in tok.input_ids]
    n_prompt = next((i for i, lab in enumerate(tok.labels) if lab != -100), len(tok.labels))
    return TokenInfluence(tokens, contrib, n_prompt, float(contrib.sum()))


def _normaliser(run: RunResults, index: int, seed_self: np.ndarray, seed: int | None, normalize: str) -> float:
    if normalize == "none":
        return 1.0
    cand = float(np.sqrt(max(run.candidates["self_influence"].iloc[index], 0.0))) or 1.0
    if normalize == "relatif":
        return cand
    if seed is None:  # the mean of per-seed cosines is not one contraction; show the raw shape, scaled
        return cand * float(np.sqrt(np.clip(seed_self, 0, None)).mean() or 1.0)
    return cand * float(np.sqrt(max(seed_self[seed], 0.0)) or 1.0)


def heatmap_html(ti: TokenInfluence) -> str:
    """Tokens as escaped text on a red (hurts) to green (helps) background; user text is never markup."""
    scale = float(np.abs(ti.contributions).max()) or 1.0
    spans = []
    for i, (t, c) in enumerate(zip(ti.tokens, ti.contributions.tolist(), strict=True)):
        a = min(abs(c) / scale, 1.0) * 0.85
        rgb = "22,163,74" if c > 0 else "220,38,38"
        style = f"background: rgba({rgb},{a:.3f}); padding: 1px 0; border-radius: 2px;"
        if i < ti.n_prompt:
            style += " opacity: 0.75;"
        text = html.escape(t).replace("\n", "&#8629;\n")  # pre-wrap keeps the line break
        spans.append(f'<span title="{c:+.4g}" style="{style}">{text}</span>')
    return '<div style="font-family: monospace; line-height: 1.8; white-space: pre-wrap;">' + "".join(spans) + "</div>"
