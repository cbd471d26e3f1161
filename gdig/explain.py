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
    """Contribution of each position of candidate `index` to its score on one seed column (or to its mean score
    over seeds), in the run's normalisation; the contributions sum to that score. Needs the run's model."""
    import torch

    from gdig.hooks import GradientCapture
    from gdig.influence import token_contributions
    from gdig.model import find_tracked_modules, prepare_tokenizer

    settings = run.config["settings"]
    prepare_tokenizer(tokenizer, model.get_input_embeddings().num_embeddings)
    tracked = find_tracked_modules(model, settings["modules"])
    c = run.candidates.iloc[index]
    tok = _tokenize(tokenizer, str(c["id"]), str(c["prompt"]), str(c["target"]), settings["data"]["max_length"])
    device = next(model.parameters()).device
    stored = _load_mean_direction(Path(run.path) / "seed_grads.safetensors", device)
    with GradientCapture(model, tracked) as cap:
        got = cap.run(_collate([tok], index, tokenizer))
        column = None if seed is None else _seed_column_direction(run, int(seed), tokenizer, cap, device)
    direction = stored["mean"] if column is None else column
    with torch.no_grad():
        contrib = token_contributions(got, direction).double().cpu().numpy()
    contrib /= _normaliser(run, index, stored["self_influence"], seed, settings["normalize"])
    tokens = [tokenizer.decode([t]) for t in tok.input_ids]
    n_prompt = next((i for i, lab in enumerate(tok.labels) if lab != -100), len(tok.labels))
    return TokenInfluence(tokens, contrib, n_prompt, float(contrib.sum()))


def _tokenize(tokenizer, id_: str, prompt: str, target: str, max_length: int):
    from gdig.data import Example, tokenize_example

    return tokenize_example(tokenizer, Example(id_, prompt, target, {}, ""), max_length)


def _collate(toks, first_index: int, tokenizer):
    from gdig.hooks import collate

    return collate(toks, list(range(first_index, first_index + len(toks))), tokenizer.pad_token_id)


def _load_mean_direction(path: Path, device) -> dict:
    """{"mean": {module: V}, "self_influence": (S,) array} from seed_grads.safetensors (older runs stored every
    seed's V; their mean is taken here)."""
    from safetensors.torch import load_file

    t = load_file(str(path), device=str(device))
    self_inf = t.pop("self_influence").double().cpu().numpy()
    mean = {k.split("::", 1)[1]: v for k, v in t.items() if k.startswith("mean::")}
    if not mean:  # a run written before the mean was stored: every seed's V, dense or low rank
        from gdig.run import load_seed_gradients

        seeds, _ = load_seed_gradients(path, device)
        mean = {name: seeds.matrix(name) for name in seeds.names}
    return {"mean": mean, "self_influence": self_inf}


def _seed_column_direction(run: RunResults, column: int, tokenizer, cap, device) -> dict:
    """(F + lambda)^-1 grad L(s) of one seed column (the mean gradient of its --seed-batch group), recomputed from
    the seed texts, the run's factors and damping: exact, where scoring may have used a low-rank copy."""
    import torch

    from gdig.curvature import Curvature
    from gdig.hooks import per_example_gradient

    settings = run.config["settings"]
    batch = int(settings.get("seed_batch", 1))
    members = run.seeds.iloc[column * batch : (column + 1) * batch]
    if members.empty:
        raise ValueError(f"seed column {column} is not in this run ({run.influence.shape[1]} columns)")
    max_length = settings["data"]["max_length"]
    toks = [_tokenize(tokenizer, str(r["id"]), str(r["prompt"]), str(r["target"]), max_length) for _, r in
            members.iterrows()]  # fmt: skip
    got = cap.run(_collate(toks, 0, tokenizer))
    factors = Path(run.path) / "factors.safetensors"
    cur = Curvature.load(factors, device) if settings["hessian"] != "identity" else Curvature("identity")
    dampings = run.config.get("damping", {})
    out = {}
    with torch.no_grad():
        for name in got.acts:
            grad = per_example_gradient(got.acts[name], got.grads[name]).mean(0)
            out[name] = cur.precondition(name, grad, float(dampings.get(name, 0.0)))
    return out


def _normaliser(run: RunResults, index: int, seed_self: np.ndarray, seed: int | None, normalize: str) -> float:
    """Divisor that turns raw contributions into the run's normalisation. For the seed mean the stored direction
    already carries each seed's 1/norm (unit), so only the candidate's norm remains."""
    if normalize == "none":
        return 1.0
    cand = float(np.sqrt(max(run.candidates["self_influence"].iloc[index], 0.0))) or 1.0
    if normalize == "relatif" or seed is None:
        return cand
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
