"""What the curator decides in the app or the CLI, saved in the run so a reload, another tab and the CLI see it:
ids forced in or out (overrides.json), the last bulk decision for its undo (last_bulk.json) and the selection
settings last used (curation.json)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from gdig.atomic import write_json_atomic
from gdig.rundir.layout import CURATION, LAST_BULK, OVERRIDES

VERBS = {"include": "included", "exclude": "excluded", None: "returned to the rule"}


def _check(decision: str | None) -> None:
    if decision not in VERBS:
        raise ValueError(f"decision must be include, exclude or None, got {decision!r}")


@dataclass
class Overrides:
    """Ids the curator forced in or out; they win over every rule."""

    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)

    def decisions(self) -> dict[str, str]:
        """Each forced id and its decision ('include' or 'exclude')."""
        return dict.fromkeys(self.include, "include") | dict.fromkeys(self.exclude, "exclude")

    def set(self, id_: str, decision: str | None) -> None:
        """decision: 'include', 'exclude' or None (back to the rule)."""
        self.set_many([id_], decision)

    def set_many(self, ids: Iterable[str], decision: str | None) -> dict[str, str | None]:
        """One decision for many ids in one pass (100,000 ids in well under a second); returns the decision each
        changed id had before (None: the rule's)."""
        _check(decision)
        state = self.decisions()
        before = {i: state.get(i) for i in dict.fromkeys(ids) if state.get(i) != decision}
        for i in before:
            if decision is None:
                del state[i]
            else:
                state[i] = decision
        if before:
            self.include = [i for i, d in state.items() if d == "include"]
            self.exclude = [i for i, d in state.items() if d == "exclude"]
        return before


@dataclass
class BulkRecord:
    """The last bulk decision: what it set, where from, and each changed id's decision before it."""

    decision: str | None
    before: dict[str, str | None]
    source: str = ""
    at: float = 0.0

    def describe(self) -> str:
        """What it did, in the words the app and the CLI show."""
        return f"{VERBS[self.decision]} {len(self.before):,} candidates" + (f" ({self.source})" if self.source else "")


def load_overrides(run: str | Path) -> Overrides:
    """The run's overrides (none when it has no overrides.json)."""
    p = Path(run) / OVERRIDES
    if not p.exists():
        return Overrides()
    d = json.loads(p.read_text())
    return Overrides([str(i) for i in d.get("include", [])], [str(i) for i in d.get("exclude", [])])


def save_overrides(run: str | Path, overrides: Overrides) -> None:
    """Replace the run's overrides atomically."""
    write_json_atomic(Path(run) / OVERRIDES, {"include": overrides.include, "exclude": overrides.exclude})


def apply_bulk(run: str | Path, ids: Iterable[str], decision: str | None, source: str = "") -> BulkRecord:
    """Set one decision on many candidates and keep what it changed for `undo_bulk`. The undo record is written
    before the overrides, so a crash between the two leaves an undo that changes nothing, never a lost one."""
    ov = load_overrides(run)
    record = BulkRecord(decision, ov.set_many(ids, decision), source, time.time())
    if record.before:
        write_json_atomic(Path(run) / LAST_BULK, record.__dict__)
        save_overrides(run, ov)
    return record


def last_bulk(run: str | Path) -> BulkRecord | None:
    """The bulk decision `undo_bulk` would undo, or None."""
    try:
        d = json.loads((Path(run) / LAST_BULK).read_text())
        return BulkRecord(d["decision"], {str(k): v for k, v in d["before"].items()}, d.get("source", ""), d["at"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return None


def undo_bulk(run: str | Path) -> int:
    """Put back the decisions the last bulk decision changed; an id decided again by hand since keeps that later
    decision. Returns how many were put back (0 when there is nothing to undo)."""
    record = last_bulk(run)
    if record is None:
        return 0
    ov = load_overrides(run)
    state = ov.decisions()
    still = {i: b for i, b in record.before.items() if state.get(i) == record.decision}
    for previous in VERBS:
        ov.set_many([i for i, b in still.items() if b == previous], previous)
    save_overrides(run, ov)
    (Path(run) / LAST_BULK).unlink(missing_ok=True)
    return len(still)


def load_curation(run: str | Path) -> dict:
    """The selection settings last used on this run in the app (rule, thresholds, K, budget...), or {}."""
    try:
        d = json.loads((Path(run) / CURATION).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return d if isinstance(d, dict) else {}


def save_curation(run: str | Path, settings: dict) -> None:
    """Keep the app's selection settings with the run, across reloads."""
    write_json_atomic(Path(run) / CURATION, settings)
