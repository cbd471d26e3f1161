"""Duplicate pairs in a pool, as a signal per candidate with its group, and the rule option "keep one per group".

Exact duplicates: the same source and target after Unicode NFKC, case folding and collapsing whitespace. Near
duplicates: the same letters and digits once punctuation and spacing are dropped as well ("The cat." and
"the  cat" and "The cat!" are one group). Digits stay: in translation a number is content, and template pairs
that differ only in a date or a count teach the model to carry it (dropping digits grouped 39% of the demo's
pool). Both are keys of the texts, hashed by Arrow in one pass, so 1,000,000 pairs take seconds
(bench/bench_duplicates.py), with no threshold to tune. A near group holds every exact group it overlaps."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

LEVELS = ("exact", "near")


@dataclass
class Duplicates:
    """Each candidate's duplicate group at both levels: a group number shared by its members, -1 when the pair
    has no duplicate at that level."""

    exact: np.ndarray  # (N,) int64
    near: np.ndarray  # (N,) int64

    def groups(self, level: str) -> np.ndarray:
        """The groups at one level: exact or near."""
        if level not in LEVELS:
            raise ValueError(f"duplicate level must be one of {', '.join(LEVELS)}, got {level!r}")
        return self.exact if level == "exact" else self.near

    def counts(self) -> dict[str, int]:
        """Rows with a duplicate, and rows that "keep one per group" would drop, at each level."""
        out = {}
        for level in LEVELS:
            g = self.groups(level)
            member = g >= 0
            out[f"{level}_duplicates"] = int(member.sum())
            out[f"{level}_extra"] = int(member.sum() - len(np.unique(g[member])))
        return out


def _normal(text: pa.Array) -> pa.Array:
    text = pc.utf8_normalize(text, "NFKC")
    text = pc.replace_substring(pc.utf8_lower(text), "ß", "ss")  # case folding: "STRASSE" is "Straße"
    return pc.utf8_trim_whitespace(pc.replace_substring_regex(text, r"\s+", " "))


def _groups(keys: pa.Array) -> np.ndarray:
    """Group number of each key shared with another row, -1 for a unique one."""
    codes = pc.dictionary_encode(keys).indices.to_numpy(zero_copy_only=False).astype(np.int64)
    shared = np.bincount(codes)[codes] > 1
    return np.where(shared, codes, -1)


def find_duplicates(sources, targets) -> Duplicates:
    """Duplicate groups of the pairs (sources[i], targets[i]): sequences of str."""
    src = _normal(pa.array(pd.Series(sources, dtype=object).astype(str), pa.large_string()))
    trg = _normal(pa.array(pd.Series(targets, dtype=object).astype(str), pa.large_string()))
    pair = pc.binary_join_element_wise(src, trg, pa.scalar("\t", pa.large_string()))  # NFKC turns no tab into text
    letters = pc.binary_join_element_wise(
        *(pc.replace_substring_regex(x, r"[^\p{L}\p{N}]+", "") for x in (src, trg)), pa.scalar("\t", pa.large_string())
    )
    return Duplicates(exact=_groups(pair), near=_groups(letters))


def pair_texts(candidates: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """The source and target texts of a run's candidates (the prompt where a run has no source column)."""
    src = candidates["src_text"] if "src_text" in candidates else candidates["prompt"]
    trg = candidates["trg_text"] if "trg_text" in candidates else candidates["target"]
    return src, trg


def one_per_group(keep: np.ndarray, groups: np.ndarray, score: np.ndarray) -> np.ndarray:
    """`keep` with only the best member (highest `score`, then the first row) of each duplicate group among the
    kept rows: a group whose best pair fails the rule keeps its next best that passes."""
    rows = np.flatnonzero(keep & (groups >= 0))
    if len(rows) == 0:
        return keep
    order = np.lexsort((rows, -np.asarray(score, np.float64)[rows], groups[rows]))
    _, first = np.unique(groups[rows][order], return_index=True)
    out = keep.copy()
    out[rows] = False
    out[rows[order][first]] = True
    return out
