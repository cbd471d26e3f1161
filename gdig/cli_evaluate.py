"""`gdig evaluate`: train on two or more selections and say which makes the better model (gdig.pipeline.evaluation)."""

from __future__ import annotations

import argparse
import sys

from gdig.config import DataConfig
from gdig.options import add_options, from_args
from gdig.pipeline.evaluation import DATA_FLAGS


def add_evaluate_command(sub) -> None:
    """`gdig evaluate --model BASE --selections A.jsonl B.jsonl ... --test TEST --out DIR`."""
    from gdig.pipeline.evaluation import EvaluationConfig

    p = sub.add_parser(
        "evaluate", help="LoRA fine-tune the base model on each selection (several seeds), compare on a test set"
    )
    p.add_argument("--selections", nargs="+", required=True, metavar="JSONL", help="two or more selection files")
    p.add_argument("--names", nargs="+", default=[], help="a name per selection (default: the file names)")
    add_options(p, EvaluationConfig)
    add_options(p, DataConfig, only=DATA_FLAGS)
    p.add_argument("--resume", action="store_true", help="continue a stopped evaluation in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run_evaluate(a: argparse.Namespace) -> int:
    """Check everything, train and evaluate, print the report; 130 when stopped (finished fits are kept)."""
    from gdig.__main__ import run_stoppable, unescape
    from gdig.inputs.model_source import check_model_source
    from gdig.pipeline.evaluation import EvaluationConfig, evaluate
    from gdig.pipeline.evaluation_report import markdown, read_report

    check_model_source(a.model, gguf_file=a.gguf_file)
    cfg = from_args(
        EvaluationConfig,
        a,
        selections=a.selections,
        names=a.names,
        data_config=from_args(DataConfig, a, prompt_template=unescape(a.prompt_template)),
    )

    def work(progress):
        return evaluate(cfg, resume=a.resume, on_progress=progress)

    out = run_stoppable(cfg.out, work, "the finished fine-tunes are kept", a.quiet)
    if out is None:
        return 130
    print(markdown(read_report(out)))
    print(f"[gdig] report: {out}/report.json", file=sys.stderr)
    return 0
