"""Why a candidate was kept or rejected (DESIGN section 1): rank and decision, the seeds it helps and hurts
most, its cluster and nearest neighbours, its loss, and token-level influence c_t = sum_modules g_t^T V a_t."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from gdig.engine.influence import normalisation_divisor
from gdig.rundir.layout import FACTORS, SEED_GRADS
from gdig.rundir.results import RunResults
from gdig.rundir.seeds import load_mean_direction
from gdig.selection.clusters import cosine_to
from gdig.studio.views import seed_members, seed_rows


@dataclass
class Explanation:
    """Why one candidate was kept or rejected, as the Explore page shows it."""

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


def explain(
    run: RunResults,
    index: int,
    kept: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    k: int = 5,
    neighbours: pd.DataFrame | None = None,
) -> Explanation:
    """The explanation of candidate `index`: rank, decision, seeds helped and hurt most, neighbours (pass
    `nearest(run, index, k)` when it is cached: the one step that reads every sketch)."""
    row = run.influence[index]
    order = np.argsort(-row, kind="stable")
    helps = order[:k][row[order[:k]] > 0]
    hurts = order[::-1][:k][row[order[::-1][:k]] < 0]
    mean = run.mean_influence
    rank = int((mean > mean[index]).sum()) + 1
    neighbours = nearest(run, index, k) if neighbours is None else neighbours
    cand = run.candidates
    cluster = None if labels is None or labels[index] < 0 else int(labels[index])
    return Explanation(
        index=index,
        id=str(cand["id"].iloc[index]),
        rank=rank,
        n=run.n,
        kept=bool(kept[index]) if kept is not None else bool(run.frac_helped[index] >= 1.0),
        frac_helped=float(run.frac_helped[index]),
        mean_influence=float(mean[index]),
        loss=float(cand["loss"].iloc[index]),
        n_tokens=int(cand["n_tokens"].iloc[index]),
        cluster=cluster,
        helps=seed_rows(run, helps, row[helps]),
        hurts=seed_rows(run, hurts, row[hurts]),
        neighbours=neighbours,
    )


def nearest(run: RunResults, index: int, k: int = 5) -> pd.DataFrame:
    """The k candidates nearest to `index` by sketch cosine (itself excluded): id, similarity, target."""
    sims = cosine_to(run.sketch, index)
    sims[index] = -np.inf
    nn = np.argsort(-sims, kind="stable")[:k]
    cand = run.candidates
    return pd.DataFrame(
        {
            "id": cand["id"].iloc[nn].astype(str).to_numpy(),
            "similarity": sims[nn],
            "target": cand["target"].iloc[nn].astype(str).to_numpy(),
        }
    )


# -- token-level influence -------------------------------------------------------------------------------------


@dataclass
class TokenInfluence:
    """Each token's contribution to one score, for the heatmap."""

    tokens: list[str]
    contributions: np.ndarray  # (T,), sums to `total`
    n_prompt: int  # the first n_prompt positions are the prompt
    total: float


def token_influence(run: RunResults, index: int, model, tokenizer, seed: int | None = None) -> TokenInfluence:
    """Contribution of each position of candidate `index` to its score on one seed column (or to its mean score
    over seeds), in the run's normalisation; the contributions sum to that score. Needs the run's model."""
    import torch

    from gdig.engine.hooks import GradientCapture
    from gdig.engine.influence import token_contributions
    from gdig.inputs.model import find_tracked_modules, prepare_tokenizer

    prepare_tokenizer(tokenizer, model.get_input_embeddings().num_embeddings)
    tracked = find_tracked_modules(model, run.settings.tracked_modules())
    c = run.candidates.iloc[index]
    tok = _tokenize(tokenizer, str(c["id"]), str(c["prompt"]), str(c["target"]), run.settings.data.max_length)
    device = next(model.parameters()).device
    stored = load_mean_direction(Path(run.path) / SEED_GRADS, device)
    with GradientCapture(model, tracked) as cap:
        got = cap.run(_collate([tok], index, tokenizer))
        column = None if seed is None else _seed_column_direction(run, int(seed), tokenizer, cap, tracked, device)
    direction = stored["mean"] if column is None else column
    with torch.no_grad():
        contrib = token_contributions(got, direction).double().cpu().numpy()
    contrib /= _normaliser(run, index, stored["self_influence"], seed, run.settings.normalize)
    tokens = [tokenizer.decode([t]) for t in tok.input_ids]
    n_prompt = next((i for i, lab in enumerate(tok.labels) if lab != -100), len(tok.labels))
    return TokenInfluence(tokens, contrib, n_prompt, float(contrib.sum()))


def _tokenize(tokenizer, id_: str, prompt: str, target: str, max_length: int):
    from gdig.inputs.data import Example, tokenize_example

    return tokenize_example(tokenizer, Example(id_, prompt, target, {}, ""), max_length)


def _collate(toks, first_index: int, tokenizer):
    from gdig.engine.hooks import collate

    return collate(toks, list(range(first_index, first_index + len(toks))), tokenizer.pad_token_id)


def _seed_column_direction(run: RunResults, column: int, tokenizer, cap, tracked, device) -> dict:
    """(F + lambda)^-1 grad L(s) of one seed column (the mean gradient of its --seed-batch group), recomputed from
    the seed texts, the run's factors and damping: exact, where scoring may have used a low-rank copy."""
    import torch

    from gdig.engine.hooks import per_example_gradient
    from gdig.engine.memory import tracked_groups
    from gdig.rundir.factors import run_curvature

    members = seed_members(run, column)
    if members.empty:
        raise ValueError(f"seed column {column} is not in this run ({run.influence.shape[1]} columns)")
    max_length = run.settings.data.max_length
    toks = [
        _tokenize(tokenizer, str(r["id"]), str(r["prompt"]), str(r["target"]), max_length)
        for _, r in members.iterrows()
    ]
    got = cap.run(_collate(toks, 0, tokenizer))
    dampings = run.config.get("module_damping", {})
    out = {}
    for group in tracked_groups(tracked, run.settings.module_partitions):  # a run in groups: a group at a time
        names = [t.name for t in group if t.name in got.acts]
        cur = run_curvature(Path(run.path) / FACTORS, run.settings.hessian, device, names)
        with torch.no_grad():
            for name in names:
                grad = per_example_gradient(got.acts[name], got.grads[name]).mean(0)
                out[name] = cur.precondition(name, grad, float(dampings.get(name, 0.0)))
    return out


def _normaliser(run: RunResults, index: int, seed_self: np.ndarray, seed: int | None, normalize: str) -> float:
    """Divisor that turns raw contributions into the run's normalisation. For the seed mean the stored direction
    already carries each seed's 1/norm (unit), so only the candidate's norm remains."""
    if seed is None and normalize == "unit":
        normalize = "relatif"
    cand = run.candidates["self_influence"].to_numpy()[[index]] if normalize != "none" else None
    seeds = seed_self[[seed]] if seed is not None else np.ones(1)
    div = normalisation_divisor(cand, seeds, normalize)
    return 1.0 if div is None or not div[0, 0] > 0 else float(div[0, 0])
