"""Signals beside influence that an MT curator expects (OpusFilter's conventions): how far a pair's length ratio
is from the pool's typical one, whether both sides are in their declared languages (lingua: offline models,
Apache-2.0), and the fine-tuned model's loss (stored by scoring). Each becomes a per-candidate score where
higher is better, so that it can be thresholded alone or combined with G-DIG's score: by the weakest link (a
pair is as good as its worst percentile rank, the rule of a filter chain) or by a rank average. What each signal
is called, which column it reads and which way is better: gdig.selection.signal_table.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence

import numpy as np

from gdig.selection import signal_table
from gdig.selection.signal_table import LOWER, TYPICAL, Signal

DETECTOR_BYTES = 450 * 2**20  # lingua's models for these languages and a pool's, held once loaded (417 MiB measured)

# Languages the detector always considers besides the pool's own, so that a third language is recognised.
COMMON_LANGUAGES = "en de fr es it pt nl ru zh ja ko ar tr pl cs sv fi uk el hi"  # ISO 639-1, space-separated


def length_ratio(src: Sequence[str], tgt: Sequence[str]) -> np.ndarray:
    """Target characters over source characters per pair (characters: fair to unsegmented scripts)."""
    ls = np.array([max(len(s), 1) for s in src], np.float64)
    lt = np.array([max(len(t), 1) for t in tgt], np.float64)
    return lt / ls


def length_score(ratio: np.ndarray) -> np.ndarray:
    """Higher when a pair's length ratio is close to the pool's typical ratio: -|log r - median log r|."""
    r = np.log(np.asarray(ratio, np.float64))
    return (-np.abs(r - np.median(r))).astype(np.float32) if len(r) else r.astype(np.float32)


def length_ratio_score(src: Sequence[str], tgt: Sequence[str]) -> np.ndarray:
    """length_score of the pairs' length ratios (the classic length-ratio filter as a score)."""
    return length_score(length_ratio(src, tgt))


@functools.lru_cache(maxsize=1024)
def lingua_language(code: str | None):
    """lingua's Language for a code (`de`, `deu`, `deu_Latn`) or a name (`German`); None when unknown. Cached:
    it is asked once per record and side, with a handful of distinct codes."""
    if not code:
        return None
    from lingua import IsoCode639_1, IsoCode639_3, Language

    text = str(code).strip()
    head = text.split("_")[0].split("-")[0].lower()
    for parse, iso in ((IsoCode639_1, Language.from_iso_code_639_1), (IsoCode639_3, Language.from_iso_code_639_3)):
        try:
            return iso(parse.from_str(head))
        except ValueError:
            continue
    return getattr(Language, text.upper(), None)


def language_scores(src: Sequence[str], tgt: Sequence[str], src_langs: Sequence, trg_langs: Sequence):
    """Per pair: the detected language of each side (ISO 639-1, "" when undecided) and how surely both sides
    are in their declared languages: the smaller of the two confidences (0..1), over the sides whose declared
    language the detector knows (NaN when neither)."""
    from lingua import LanguageDetectorBuilder

    declared_src = [lingua_language(c) for c in src_langs]
    declared_trg = [lingua_language(c) for c in trg_langs]
    languages = {lingua_language(c) for c in COMMON_LANGUAGES.split()} | set(declared_src) | set(declared_trg)
    detector = LanguageDetectorBuilder.from_languages(*(x for x in languages if x is not None)).build()
    out = {}
    for side, texts, declared in (("src", src, declared_src), ("trg", tgt, declared_trg)):
        found = detector.detect_languages_in_parallel_of(list(texts))
        out[f"{side}_lang_detected"] = np.array([x.iso_code_639_1.name.lower() if x else "" for x in found])
        out[f"{side}_confidence"] = _confidences(detector, texts, declared)
    both = np.fmin(out.pop("src_confidence"), out.pop("trg_confidence"))  # NaN only where both are NaN
    return out | {"language_score": both.astype(np.float32)}


def _confidences(detector, texts: Sequence[str], declared: list) -> np.ndarray:
    """The detector's confidence that each text is in its declared language (NaN where none is declared)."""
    out = np.full(len(texts), np.nan)
    for language in {d for d in declared if d is not None}:
        rows = [i for i, d in enumerate(declared) if d == language]
        got = detector.compute_language_confidence_in_parallel([texts[i] for i in rows], language)
        out[rows] = got
    return out


def candidate_signals(src: Sequence[str], tgt: Sequence[str], src_langs: Sequence, trg_langs: Sequence) -> dict:
    """The stored columns: length_ratio, and (when lingua is installed) the detected languages and
    language_score."""
    columns = {"length_ratio": length_ratio(src, tgt).astype(np.float32)}
    try:
        import lingua  # noqa: F401
    except ImportError:
        return columns
    return columns | language_scores(src, tgt, src_langs, trg_langs)


def signal_scores(candidates) -> dict[str, np.ndarray]:
    """Each signal of gdig.selection.signal_table that a run's candidates table has, as a higher-is-better score per
    candidate, in the table's order (a run scored before signals were stored gets its length ratio from its
    texts)."""
    if "length_ratio" not in candidates:
        src = candidates["src_text"] if "src_text" in candidates else candidates["prompt"]
        tgt = candidates["trg_text"] if "trg_text" in candidates else candidates["target"]
        candidates = candidates.assign(length_ratio=length_ratio(src.astype(str).tolist(), tgt.astype(str).tolist()))
    return {s.name: _as_score(s, candidates[s.column]) for s in signal_table.SIGNALS if s.column in candidates}


def _as_score(signal: Signal, column) -> np.ndarray:
    """A stored column as a higher-is-better score, by the signal's direction."""
    if signal.direction == TYPICAL:
        return length_score(column.to_numpy())
    values = column.to_numpy(np.float64)
    return -values if signal.direction == LOWER else values


def rule_signals(signals: dict[str, np.ndarray], adequacy: bool) -> dict[str, np.ndarray]:
    """The signals the rule reads: the adequacy ones only when asked (SelectionConfig.adequacy)."""
    return {
        k: v
        for k, v in signals.items()
        if adequacy or not (k in signal_table.BY_NAME and signal_table.BY_NAME[k].adequacy)
    }


def rank_average(scores: Sequence[np.ndarray]) -> np.ndarray:
    """The mean of each score's percentile rank (0 worst .. 1 best; ties share their mean rank), over the
    scores a candidate has (NaN skipped): a combination that needs no common scale."""
    return mean_rank(rank_matrix(scores))


def weakest_rank(scores: Sequence[np.ndarray]) -> np.ndarray:
    """The lowest of each candidate's percentile ranks over the scores it has (NaN skipped; NaN when none): a
    pair is as good as its worst signal, as in a filter chain (OpusFilter's convention: pass every filter).
    A corruption that one signal sees plainly is not averaged away by the others (bench/README.md)."""
    return lowest_rank(rank_matrix(scores))


def rule_scores(rule: str, mean_influence, quality, signals: dict) -> list[np.ndarray]:
    """The scores the combined rules rank: G-DIG's statistic as the rule reads it (mean influence, or the
    fraction of seeds helped with its tie-break), then each signal."""
    return [mean_influence if rule == "mean" else quality, *signals.values()]


def rank_matrix(scores: Sequence[np.ndarray]) -> np.ndarray:
    """(k, N) percentile ranks of k scores (NaN where a score is missing): ranked once, then combined as many
    ways as needed (ranking is most of a combination's time: 0.2 s a score at 1,000,000 candidates)."""
    return np.stack([_percentile_ranks(np.asarray(s, np.float64)) for s in scores])


def mean_rank(ranks: np.ndarray) -> np.ndarray:
    """Per candidate, the mean of a rank_matrix's rows it has (NaN when none)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a candidate with no score at all: NaN, said by the value
        return np.nanmean(ranks, axis=0)


def lowest_rank(ranks: np.ndarray) -> np.ndarray:
    """Per candidate, the lowest of a rank_matrix's rows it has (NaN when none)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmin(ranks, axis=0)


def _percentile_ranks(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    out = np.full(len(x), np.nan)
    ok = ~np.isnan(x)
    n = int(ok.sum())
    if n:
        out[ok] = (rankdata(x[ok]) - 1) / max(n - 1, 1)
    return out


def signal_filters(cfg, signals: dict[str, np.ndarray], n: int) -> np.ndarray:
    """The candidates that a SelectionConfig's thresholds on the signals let through (a missing score, such as an
    undecided language, is no evidence: kept)."""
    ok = np.ones(n, bool)
    for signal in signal_table.thresholded():
        limit = getattr(cfg, signal.threshold)
        if limit is None:
            continue
        if signal.name not in signals:
            raise ValueError(
                f"this run has no {signal.name} signal (scored before signals were stored); clear the filter"
            )
        score = np.asarray(signals[signal.name], np.float64)
        ok &= np.isnan(score) | (score >= signal.threshold_sign * limit)
    return ok


def check_fraction(name: str, value: float | None) -> None:
    """A threshold that is a share between 0 and 1 (or None: off)."""
    if value is not None and not (math.isfinite(value) and 0 <= value <= 1):
        raise ValueError(f"{name} must be between 0 and 1, got {value}")
