"""The one word each candidate's decision has on every page and in every table, and the rows of ids (overrides
and exports name candidates by id)."""

from __future__ import annotations

import numpy as np

DECISIONS = ("selected", "kept", "rejected", "included by hand", "excluded by hand")
HAND_LABELS = {"include": DECISIONS[3], "exclude": DECISIONS[4]}  # the words of a decision made by hand


def decision_labels(sel, ids: list[str] | dict[str, int], include=(), exclude=()) -> np.ndarray:
    """One word per candidate, the same on every page: selected (in the budget), kept (passed the rule, not in
    the budget), rejected, or included / excluded by hand (overrides win over the rule)."""
    code = np.where(sel.kept, 1, 2)  # codes index DECISIONS: one small array indexed, no million-string work
    code[sel.indices] = 0
    code[positions(ids, include, missing_ok=True)] = 3
    code[positions(ids, exclude, missing_ok=True)] = 4
    return np.array(DECISIONS)[code]


def id_index(ids) -> dict[str, int]:
    """Row of each id: `ids` as a list, or the index itself (a run keeps one: built per call it costs a quarter
    of a second at 1,000,000 candidates)."""
    return ids if isinstance(ids, dict) else {v: i for i, v in enumerate(ids)}


def positions(ids: list[str] | dict[str, int], wanted, missing_ok: bool = False) -> np.ndarray:
    """Rows of the `wanted` ids, in their order (the id index is built only when some are wanted: at 1,000,000
    candidates it costs a quarter of a second)."""
    wanted = list(wanted)
    if not wanted:
        return np.zeros(0, np.int64)
    pos = id_index(ids)
    return np.array([pos[i] for i in wanted if not missing_ok or i in pos], np.int64)


def cluster_names(labels: np.ndarray) -> np.ndarray:
    """Cluster labels as text, with the rows that were not clustered (rejected by the rule) named as such."""
    return np.where(labels < 0, "not clustered (rejected)", labels.astype(str))
