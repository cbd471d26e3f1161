"""Ask the pool (`gdig query`): for one pair, typically a wrong translation seen in testing or its correct
version, the pool pairs that help it most and hurt it most, from the run's gradient index: one forward and
backward pass for the pair, one matrix-vector product over the pool."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from gdig.engine.index_scoring import index_scores
from gdig.inputs.data import Example, build_example
from gdig.pipeline.index_run import RunModel, run_anchor
from gdig.rundir.index import RunIndex
from gdig.rundir.results import RunResults


@dataclass
class Answer:
    """One pair's answer: its loss under the run's model, its score on every pool pair, the best and worst."""

    pair: Example
    loss: float
    scores: np.ndarray  # (N,), the run's normalisation, from the index
    helps: np.ndarray  # row indices, most helpful first
    hurts: np.ndarray  # row indices, most harmful first


def pair_example(
    run: RunResults, src: str, trg: str, src_lang: str | None = None, trg_lang: str | None = None, id_: str = "query"
) -> Example:
    """A typed pair as the run would have read it: its prompt template, and the languages given, else the run's
    defaults, else the ones most of its pool declares."""
    rec = {"src_text": src, "trg_text": trg}
    rec |= {k: v for k, v in (("src_lang", src_lang), ("trg_lang", trg_lang)) if v}
    langs = pool_languages(run)
    template = run.settings.data.prompt_template
    ex = build_example("query", None, rec, template, langs.get("src_lang"), langs.get("trg_lang"))
    ex.id = id_
    return ex


def pool_languages(run: RunResults) -> dict[str, str]:
    """The source and target languages a new pair gets: the run's defaults, else the ones most of its pool
    declares (absent when neither says)."""
    data = run.settings.data
    out = {}
    for column in ("src_lang", "trg_lang"):
        counts = run.candidates[column].dropna().astype(str).value_counts() if column in run.candidates else []
        lang = getattr(data, column) or (str(counts.index[0]) if len(counts) else None)
        if lang:
            out[column] = lang
    return out


def ask(run: RunResults, index: RunIndex, runner: RunModel, pairs: list[Example], top: int = 10) -> list[Answer]:
    """The pool pairs that help and hurt each of `pairs` most (scores in the run's normalisation)."""
    runner.use_index(index)
    got = runner.gradients(pairs, "query")
    anchor = run_anchor(run.influence, run.seeds, index)
    scores = index_scores(index.pool, got.rows, run.settings.normalize, anchor)
    answers = []
    for j, pair in enumerate(pairs):
        col = scores[:, j]
        answers.append(Answer(pair, float(got.loss[j]), col, _top(col, top), _top(-col, top)))
    return answers


def _top(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values, largest first (ties by row order)."""
    k = min(k, len(values))
    part = np.argpartition(-values, k - 1)[:k] if k < len(values) else np.arange(len(values))
    return part[np.lexsort((part, -values[part]))]


def answer_table(run: RunResults, answer: Answer, which: str, labels: np.ndarray | None = None) -> pd.DataFrame:
    """The helping or hurting pool pairs of an answer: rank, id, score, source and target (and cluster)."""
    rows = answer.helps if which == "helps" else answer.hurts
    cands = run.candidates.iloc[rows]
    table = pd.DataFrame(
        {
            "row": rows,
            "id": cands["id"].astype(str).to_numpy(),
            "score": answer.scores[rows],
            "source": (cands["src_text"] if "src_text" in cands else cands["prompt"]).astype(str).to_numpy(),
            "target": cands["target"].to_numpy(),
        }
    )
    if labels is not None:
        table.insert(3, "cluster", labels[rows])
    return table
