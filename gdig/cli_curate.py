"""`gdig curate RUN`: the curator's decisions from the command line, saved in the run like the app's: include,
exclude or return to the rule every id of a file in one bulk decision, undo the last one, or show them."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gdig.rundir.curation import VERBS, apply_bulk, last_bulk, load_overrides, undo_bulk

ACTIONS = {"include_ids": "include", "exclude_ids": "exclude", "reset_ids": None}


def add_curate_command(sub) -> None:
    """`gdig curate`: exactly one of the bulk decisions, the undo, or the summary."""
    p = sub.add_parser("curate", help="include, exclude or reset many candidates at once; undo; show the decisions")
    p.add_argument("run_dir", help="a finished run directory")
    what = p.add_mutually_exclusive_group(required=True)
    ids_help = (
        "a file of candidate ids, one per line ('-': standard input); a JSONL line names its record's "
        "'gdig'.'id' or 'id' (an exported selection works)"
    )
    what.add_argument("--include-ids", metavar="FILE", help=f"keep these whatever the rule: {ids_help}")
    what.add_argument("--exclude-ids", metavar="FILE", help="drop these whatever the rule (same file formats)")
    what.add_argument("--reset-ids", metavar="FILE", help="return these to the rule (same file formats)")
    what.add_argument("--undo", action="store_true", help="undo the last bulk decision (from the CLI or the app)")
    what.add_argument("--show", action="store_true", help="count the decisions by hand and name the last bulk one")


def read_ids(path: str, known: dict[str, int]) -> list[str]:
    """The ids a file names, in order; an unknown id or a JSON line without one is an error naming the file and
    line (nothing is applied)."""
    lines = sys.stdin.read().splitlines() if path == "-" else _read_text(path).splitlines()
    name = "standard input" if path == "-" else path
    ids: list[str] = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text:
            continue
        id_ = _id_of_json(text, name, number) if text.startswith("{") else text
        if id_ not in known:
            raise ValueError(f"{name} line {number}: id {id_!r} is not a candidate of this run; nothing was changed")
        ids.append(id_)
    if not ids:
        raise ValueError(f"{name} names no candidate id; nothing was changed")
    return ids


def _read_text(path: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no file {path}")
    return p.read_text(encoding="utf-8")


def _id_of_json(text: str, name: str, number: int) -> str:
    try:
        rec = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{name} line {number}: not valid JSON ({e.msg})") from None
    meta = rec.get("gdig") if isinstance(rec, dict) else None
    id_ = meta.get("id") if isinstance(meta, dict) else rec.get("id") if isinstance(rec, dict) else None
    if id_ is None:
        raise ValueError(f"{name} line {number}: a JSON record without 'gdig'.'id' or 'id'")
    return str(id_)


def run_curate(a: argparse.Namespace) -> None:
    """Apply, undo or show; one line on stderr says what changed."""
    from gdig.rundir.results import load_run

    run = load_run(a.run_dir)
    if a.show:
        ov, last = load_overrides(run.path), last_bulk(run.path)
        print(f"included by hand: {len(ov.include):,}; excluded by hand: {len(ov.exclude):,} of {run.n:,}")
        print(f"last bulk decision: {last.describe() if last else 'none'}")
        return
    if a.undo:
        last = last_bulk(run.path)
        if last is None:
            raise ValueError(f"{run.path} has no bulk decision to undo")
        put_back = undo_bulk(run.path)
        print(f"[gdig] undid: {last.describe()}; {put_back:,} put back", file=sys.stderr)
        return
    option = next(k for k in ACTIONS if getattr(a, k))
    ids = read_ids(getattr(a, option), run.id_index)
    record = apply_bulk(run.path, ids, ACTIONS[option], source="cli")
    unchanged = len(set(ids)) - len(record.before)
    print(
        f"[gdig] {VERBS[ACTIONS[option]]} {len(record.before):,} candidates ({unchanged:,} already were); "
        f"undo: gdig curate {a.run_dir} --undo",
        file=sys.stderr,
    )
