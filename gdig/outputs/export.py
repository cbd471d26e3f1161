"""Write a selection as JSONL (each example's original fields, unchanged) plus a manifest with the settings,
counts and a checksum. Both files are written to temporary names and renamed: a crash never leaves half a file.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

from gdig.atomic import write_bytes_atomic
from gdig.names import check_name
from gdig.pipeline.evaluation_report import evaluations_summary
from gdig.rundir.layout import SELECTIONS
from gdig.rundir.results import RunResults
from gdig.selection.select import Selection, SelectionConfig
from gdig.selection.signal_table import exported_columns

META_FIELD = "gdig"


def _plain(value):
    """A JSON value of a stored signal (NaN becomes null)."""
    if isinstance(value, str):
        return value
    value = float(value)
    return None if value != value else round(value, 6)


def selection_lines(run: RunResults, sel: Selection, metadata: bool = True) -> list[str]:
    """One JSON line per selected example: its original record, and optionally a `gdig` field."""
    records = run.candidates["record"].iloc[sel.indices].tolist()  # the selected rows only, not the whole pool
    ids = run.ids
    signals = {k: run.candidates[k].to_numpy() for k in exported_columns() if k in run.candidates}
    lines = []
    for record, i in zip(records, sel.indices.tolist(), strict=True):
        rec: dict[str, Any] = json.loads(record)
        if metadata:
            rec[META_FIELD] = {
                "id": ids[i],
                "mean_influence": round(float(run.mean_influence[i]), 8),
                "frac_helped": round(float(run.frac_helped[i]), 6),
                "cluster": int(sel.labels[i]),
            } | {k: _plain(v[i]) for k, v in signals.items()}
        lines.append(json.dumps(rec, ensure_ascii=False) + "\n")
    return lines


def manifest(run: RunResults, sel: Selection, cfg: SelectionConfig, jsonl_bytes: bytes, metadata: bool) -> dict:
    """The export's manifest: run, settings, counts and the JSONL's sha256, so a file can be traced and verified."""
    return {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "run": str(run.path),
        "run_fingerprints": run.fingerprint,
        "run_settings": run.config.get("settings", {}),
        "selection": cfg.to_dict(),
        "metadata_field": META_FIELD if metadata else None,
        "counts": {
            "candidates": run.n,
            "kept_by_quality_rule": int(sel.kept.sum()),
            "dropped_as_duplicates": sel.dropped_duplicates,
            "selected": len(sel.indices),
            "per_cluster": {str(k): v for k, v in sel.cluster_counts().items()},
        },
        "messages": sel.messages,
        "evaluations": evaluations_summary(run.path),
        "sha256": hashlib.sha256(jsonl_bytes).hexdigest(),
    }


def export_selection(
    run: RunResults, sel: Selection, cfg: SelectionConfig, out: str | Path, metadata: bool = True
) -> tuple[Path, Path]:
    """Write OUT.jsonl and its manifest OUT.json; returns both paths."""
    out = Path(out)
    if out.suffix != ".jsonl":
        raise ValueError(f"{out}: the export must end in .jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(selection_lines(run, sel, metadata)).encode("utf-8")
    man = manifest(run, sel, cfg, data, metadata)
    man_path = out.with_suffix(".json")
    write_bytes_atomic(out, data)
    write_bytes_atomic(man_path, (json.dumps(man, indent=2, ensure_ascii=False) + "\n").encode())
    return out, man_path


def save_into_run(run: RunResults, sel: Selection, cfg: SelectionConfig, name: str, metadata: bool = True):
    """Save as selections/<name>.jsonl and .json inside the run."""
    name = check_name(name, "selection name")
    if name.endswith((".jsonl", ".json")):
        raise ValueError(f"selection name {name!r}: give it without an extension")
    return export_selection(run, sel, cfg, run.path / SELECTIONS / f"{name}.jsonl", metadata)


def verify_export(path: str | Path) -> bool:
    """True when the JSONL matches the checksum in its manifest."""
    path = Path(path)
    man = json.loads(path.with_suffix(".json").read_text())
    return hashlib.sha256(path.read_bytes()).hexdigest() == man["sha256"]
