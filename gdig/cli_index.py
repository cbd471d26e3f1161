"""The command line of the gradient index: `gdig index RUN`, `gdig rescore RUN`, `gdig query RUN` (DESIGN
section 4). Bad input raises ValueError, which `gdig` prints as one line."""

from __future__ import annotations

import argparse
import sys

from gdig.config import ScoreConfig
from gdig.options import specs


def add_index_commands(sub) -> None:
    """The subcommands that use a run's gradient index: index, rescore, query."""
    p = sub.add_parser("index", help="add the gradient index to a run made without one (one pass over its pool)")
    p.add_argument("run_dir", help="a finished run directory")
    specs_ = specs(ScoreConfig)
    p.add_argument("--index-dim", type=int, default=None, help=specs_["index_dim"].help)
    p.add_argument("--index-dtype", choices=specs_["index_dtype"].choices, help=specs_["index_dtype"].help)
    p.add_argument(
        "--index-projection", choices=specs_["index_projection"].choices, help=specs_["index_projection"].help
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")

    p = sub.add_parser("rescore", help="a new seed set scored from a run's index: a new run, no pass over the pool")
    p.add_argument("run_dir", help="a finished run directory with a gradient index")
    p.add_argument("--out", required=True, help="the new run directory")
    p.add_argument("--seeds", help="seed file (same formats as gdig score); replaces the run's seeds unless --add")
    p.add_argument("--add", action="store_true", help="keep the run's seeds (exact columns) and add --seeds")
    p.add_argument("--drop", nargs="+", default=[], metavar="ID", help="drop the run's seeds with these ids (exact)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")

    p = sub.add_parser("query", help="the pool pairs that help and hurt one pair most, from a run's index")
    p.add_argument("run_dir", help="a finished run directory with a gradient index")
    p.add_argument("--src", help="source text of the pair")
    p.add_argument("--trg", help="target text of the pair (e.g. a wrong translation seen in testing)")
    p.add_argument("--src-lang", help="source language (default: the run's)")
    p.add_argument("--trg-lang", help="target language (default: the run's)")
    p.add_argument("--pairs", help="a file of pairs instead of --src/--trg (same formats as gdig score)")
    p.add_argument("--top", type=int, default=10, help="how many helping and hurting pool pairs to list")
    p.add_argument("--json", action="store_true", help="one JSON object per pair on stdout")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")


def run_index(a: argparse.Namespace) -> None:
    """`gdig index`: the index of an older run, with its measured agreement."""
    from gdig.pipeline.index_run import build_index

    meta = build_index(
        a.run_dir, a.index_dim, a.index_dtype, a.device, on_progress=_stage_printer(), projection=a.index_projection
    )
    agr = meta["agreement"]
    print(
        f"[gdig] index of {meta['k']} dimensions added to {a.run_dir}; on the run's seeds the index's mean scores "
        f"agree with the exact ones at Spearman {agr['spearman_mean']:.4f} (per seed, median "
        f"{agr['spearman_seed_median']:.4f})",
        file=sys.stderr,
    )


def run_rescore(a: argparse.Namespace) -> None:
    """`gdig rescore`: the run's seeds replaced, added to or thinned, scored from its index."""
    from gdig.pipeline.rescoring import SeedEdit, describe, read_seed_file, rescore
    from gdig.rundir.results import load_run

    if a.seeds is None and not a.drop:
        raise ValueError("give --seeds FILE (new seeds) and/or --drop ID ... (seeds of the run to drop)")
    if a.add and a.seeds is None:
        raise ValueError("--add needs --seeds FILE")
    if a.drop and a.seeds and not a.add:
        raise ValueError("--seeds without --add replaces every seed; to drop some and add others, give --add too")
    run = load_run(a.run_dir)
    add = read_seed_file(run, a.seeds) if a.seeds else None
    edit = SeedEdit(add=add, drop=a.drop, replace=add is not None and not a.add)
    out = rescore(a.run_dir, a.out, edit, a.device, on_progress=_stage_printer())
    print(f"[gdig] {out}: {describe(load_run(out))}", file=sys.stderr)


def run_query(a: argparse.Namespace) -> None:
    """`gdig query`: for each pair, the pool pairs that help and hurt it most."""
    import json

    from gdig.pipeline.index_run import RunModel
    from gdig.pipeline.query import answer_table, ask, pair_example
    from gdig.pipeline.rescoring import read_seed_file
    from gdig.rundir.index import load_index
    from gdig.rundir.results import load_run

    if bool(a.pairs) == bool(a.src or a.trg) or (not a.pairs and not (a.src and a.trg)):
        raise ValueError("give --src TEXT and --trg TEXT, or --pairs FILE")
    if a.top < 1:
        raise ValueError(f"--top must be >= 1, got {a.top}")
    run = load_run(a.run_dir)
    index = load_index(run.path)  # before the model loads: a run without an index is said at once
    pairs = (
        read_seed_file(run, a.pairs).examples if a.pairs else [pair_example(run, a.src, a.trg, a.src_lang, a.trg_lang)]
    )
    for answer in ask(run, index, RunModel(run.path, a.device), pairs, a.top):
        helps, hurts = answer_table(run, answer, "helps"), answer_table(run, answer, "hurts")
        if a.json:
            cols = ["id", "score", "source", "target"]
            record = {"pair": answer.pair.id, "target": answer.pair.target, "loss": answer.loss}
            record |= {"helps": helps[cols].to_dict("records"), "hurts": hurts[cols].to_dict("records")}
            print(json.dumps(record, ensure_ascii=False))
            continue
        print(f"pair {answer.pair.id}: loss {answer.loss:.3f} under the run's model; target: {answer.pair.target}")
        for title, table in (("helps it most", helps), ("hurts it most", hurts)):
            print(f"  pool pairs that {title}:")
            for r in table.itertuples():
                print(f"    {r.score:+.4f}  id {r.id}: {_short(r.target)}")


def _short(text: str, width: int = 90) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _stage_printer():
    """Progress of a short command as one line per tenth, on stderr."""
    last = {}

    def show(stage: str, done: int, total: int) -> None:
        step = int(10 * done / max(total, 1))
        if last.get(stage) != step:
            last[stage] = step
            print(f"[gdig] {stage} {done}/{total}", file=sys.stderr, flush=True)

    return show


INDEX_COMMANDS = {"index": run_index, "rescore": run_rescore, "query": run_query}
