"""`gdig compare RUN SEL_A SEL_B [SEL_C]`: selections of one run side by side (gdig.outputs.compare), as text or
JSON."""

from __future__ import annotations

import argparse
import json

import pandas as pd

from gdig.outputs.compare import RULES, compare, current_config, resolve, rows_table
from gdig.rundir.results import load_run


def add_compare_command(sub) -> None:
    """`gdig compare`: two or three selections, each a rule, a selection saved in the run, or a JSONL export."""
    p = sub.add_parser("compare", help="two or three selections of a run side by side: overlap, clusters, kinds")
    p.add_argument("run_dir", help="a finished run directory")
    rules = "; ".join(f"{k}: {v}" for k, v in RULES.items())
    p.add_argument(
        "selections",
        nargs="+",
        metavar="SELECTION",
        help=f"a rule ({rules}), a selection saved in the run (a rule's name wins: give such a file by its path), "
        "or a JSONL file",
    )
    p.add_argument(
        "--budget",
        type=int,
        default=None,
        help="budget of the rules (default: the rule's kept set; "
        "length-ratio and random take the size of the first selection)",
    )
    p.add_argument("--clusters", type=int, default=10, help="K of the one clustering of the pool (default: 10)")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the clustering, the rules' K-means and random (default: 0)"
    )
    p.add_argument("--rows", type=int, default=10, help="pairs listed from each selection's own part (default: 10)")
    p.add_argument("--json", action="store_true", help="the comparison as JSON")


def run_compare(a: argparse.Namespace) -> None:
    """Resolve, compare and print."""
    if a.budget is not None and a.budget < 1:
        raise ValueError(f"--budget {a.budget}: give a positive number of pairs (or leave it out)")
    run = load_run(a.run_dir)
    sels = resolve(run, a.selections, a.budget, current_config(run.path), a.seed)
    result = compare(run, sels, a.clusters, a.seed)
    if a.json:
        only = {n: run.candidates["id"].astype(str).iloc[result.only(n)].tolist() for n in result.names}
        print(json.dumps(result.to_dict() | {"only": only}, indent=2, default=float))
        return
    print(f"Selections of {run.path} ({run.n:,} candidates):")
    for s in sels:
        print(f"  {s.name}: {len(s.rows):,} pairs ({s.source})")
    print("Overlap: " + " · ".join(f"{k} {v:,}" for k, v in result.regions.items()))
    with pd.option_context("display.width", 120, "display.max_columns", 20, "display.max_colwidth", 40):
        print(f"\nPer cluster (K = {a.clusters} over the whole pool):\n{result.per_cluster.to_string()}")
        if result.per_kind is not None:
            print(f"\nPer kind:\n{result.per_kind.to_string()}")
        print(f"\nDistributions:\n{result.distributions.round(4).to_string()}")
        for n in result.names:
            rows = result.only(n)
            table = rows_table(run, rows, result.labels).head(a.rows)
            print(f"\nOnly in {n}: {len(rows):,} pairs" + (f" (the first {len(table)}):" if len(table) else ""))
            if len(table):
                print(table.to_string(index=False))
