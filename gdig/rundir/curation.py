"""What the curator decides in the app, saved in the run so a reload, another tab and the CLI see it: ids
forced in or out (overrides.json) and the selection settings last used (curation.json)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from gdig.atomic import write_json_atomic
from gdig.rundir.layout import CURATION, OVERRIDES


@dataclass
class Overrides:
    """Ids the curator forced in or out; they win over every rule."""

    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)

    def set(self, id_: str, decision: str | None) -> None:
        """decision: 'include', 'exclude' or None (back to the rule)."""
        self.include = [i for i in self.include if i != id_]
        self.exclude = [i for i in self.exclude if i != id_]
        if decision == "include":
            self.include.append(id_)
        elif decision == "exclude":
            self.exclude.append(id_)
        elif decision is not None:
            raise ValueError(f"decision must be include, exclude or None, got {decision!r}")


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
