"""Command line: `python -m gdig score ...` (DESIGN section 4)."""

from __future__ import annotations

import argparse
import sys

from gdig.config import DEFAULT_MODULES, HESSIANS, NORMALIZATIONS, DataConfig, ScoreConfig


def _add_score(sub) -> None:
    p = sub.add_parser("score", help="influence of every candidate on every seed, and gradient sketches")
    p.add_argument("--model", required=True, help="local model folder or hub id (already in the local cache)")
    p.add_argument("--candidates", required=True, help="candidate pool: .jsonl/.json/.csv/.tsv/.parquet or SRC,TGT")
    p.add_argument("--seeds", required=True, help="trusted seed set, same formats")
    p.add_argument("--out", required=True, help="run directory to create (or to continue with --resume)")
    p.add_argument("--hessian", choices=HESSIANS, default="ekfac")
    damp = p.add_mutually_exclusive_group()
    damp.add_argument("--damping", type=float, help="absolute damping lambda")
    damp.add_argument("--damping-relative", type=float, help="lambda = R * mean eigenvalue, per module (default 0.1)")
    p.add_argument(
        "--normalize",
        choices=NORMALIZATIONS,
        default="unit",
        help="unit (default): cosine in the preconditioned metric; none: the paper's raw I(z,s); relatif: RelatIF",
    )
    p.add_argument("--seed-batch", type=int, default=1, help="average seed gradients in groups of k")
    p.add_argument("--modules", default=DEFAULT_MODULES, help="regex (re.search) over module names to track")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--token-budget", type=int, help="max padded tokens per batch (overrides --batch-size)")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--fit-examples", type=int, help="fit curvature on a random subset of this many candidates")
    p.add_argument("--fit-cache-mb", type=int, help="memory for reusing the curvature pass's captures later "
                   "(default: a third of available memory, at most 8192; 0 = recompute)")  # fmt: skip
    p.add_argument("--sketch-dim", type=int, default=1024)
    p.add_argument("--seed-rank", type=int, help="keep preconditioned seed gradients at this rank (large layers)")
    p.add_argument("--chunk-size", type=int, default=256, help="candidates per resumable chunk")
    p.add_argument(
        "--checkpoint-seconds",
        type=float,
        default=60.0,
        help="save the curvature fit's partial sums this often (and on cancel) for --resume",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--prompt-template", help="format string with {src_text}, {src_lang}, {trg_lang}")
    p.add_argument("--src-lang", help="source language when the data does not say")
    p.add_argument("--trg-lang", help="target language when the data does not say")
    p.add_argument("--random-state", type=int, default=0)
    p.add_argument("--trust-remote-code", action="store_true", help="run the model repository's own code")
    p.add_argument("--no-umap", action="store_true", help="skip the 2-D map (the app computes it when first shown)")
    p.add_argument("--resume", action="store_true", help="continue a killed run in --out")
    p.add_argument("--quiet", action="store_true")


def _add_select(sub) -> None:
    from gdig.select import METHODS, STRATEGIES, WITHIN

    p = sub.add_parser("select", help="quality rule, gradient clusters and resampling; writes JSONL + manifest")
    p.add_argument("run_dir", help="a finished run directory")
    p.add_argument("--out", required=True, help="FILE.jsonl to write (its manifest goes to FILE.json)")
    rule = p.add_mutually_exclusive_group()
    rule.add_argument(
        "--tau",
        type=float,
        help="keep candidates helping at least this fraction of seeds (--tau 1 is the paper's rule)",
    )
    rule.add_argument(
        "--min-mean",
        type=float,
        help="keep candidates with mean influence >= X "
        "(the default rule, with X = 0: candidates that help the seeds on average)",
    )
    p.add_argument("--clusters", type=int, default=10, help="K for K-means over gradient sketches")
    p.add_argument("--budget", type=int, help="how many to select (default, or 0: every kept candidate)")
    p.add_argument("--strategy", choices=STRATEGIES, default="uniform")
    p.add_argument("--within", choices=WITHIN, default="quality", help="order inside a cluster")
    p.add_argument("--method", choices=METHODS, default="gdig", help="gdig, or a baseline for comparison")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-metadata", action="store_true", help="write the original records only, no 'gdig' field")
    p.add_argument("--ignore-overrides", action="store_true", help="ignore the run's saved include/exclude")


def run_select(a: argparse.Namespace) -> None:
    from gdig.export import export_selection
    from gdig.results import load_overrides, load_run
    from gdig.select import SelectionConfig, select_run

    run = load_run(a.run_dir)
    ov = load_overrides(run.path)
    rule = {"rule": "fraction", "tau": a.tau} if a.tau is not None else {}
    rule = rule or ({"rule": "mean", "min_mean": a.min_mean} if a.min_mean is not None else {})
    cfg = SelectionConfig(method=a.method, **rule, clusters=a.clusters, budget=a.budget,
                          strategy=a.strategy, within=a.within, seed=a.seed,
                          include=[] if a.ignore_overrides else ov.include,
                          exclude=[] if a.ignore_overrides else ov.exclude)  # fmt: skip
    sel = select_run(run, cfg)
    if len(sel.indices) == 0:
        raise ValueError(f"nothing selected: {_why_empty(run, cfg)}; no file was written")
    out, man = export_selection(run, sel, cfg, a.out, metadata=not a.no_metadata)
    for m in sel.messages:
        print(f"gdig: note: {m}", file=sys.stderr)
    print(f"[gdig] kept {int(sel.kept.sum())} of {run.n} by the quality rule; selected {len(sel.indices)} -> {out}",
          file=sys.stderr)  # fmt: skip


def _why_empty(run, cfg) -> str:
    if cfg.rule == "fraction":
        best = float(run.frac_helped.max()) if run.n else 0.0
        return f"no candidate helps at least {cfg.tau:.0%} of the seeds (the best helps {best:.0%}); lower --tau"
    best = float(run.mean_influence.max()) if run.n else 0.0
    return f"no candidate has mean influence >= {cfg.min_mean:g} (the highest is {best:.4g}); lower --min-mean"


def _add_finetune(sub) -> None:
    p = sub.add_parser("finetune", help="train a causal LM on a data file (G-DIG step 1), full or LoRA")
    p.add_argument("--model", required=True, help="local model folder or hub id (already in the local cache)")
    p.add_argument("--data", required=True, help="training file, same formats as scoring")
    p.add_argument("--out", required=True, help="folder for the trained model (a standard Hugging Face folder)")
    p.add_argument("--lora", action="store_true", help="train LoRA adapters (peft) and save the merged model")
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-alpha", type=int, default=16)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-steps", type=int, help="optimizer steps (overrides --epochs)")
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--warmup-ratio", type=float, default=0.05)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    p.add_argument("--trg-lang", help="target language when the data does not say")
    p.add_argument("--checkpoint-every", type=int, default=200, help="optimizer steps between checkpoints")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")


def run_finetune(a: argparse.Namespace) -> None:
    from gdig.finetune import FinetuneConfig, finetune
    from gdig.model_source import check_model_source

    check_model_source(a.model)

    cfg = FinetuneConfig(model=a.model, data=a.data, out=a.out, lora=a.lora, lora_r=a.lora_r, lora_alpha=a.lora_alpha,
                         epochs=a.epochs, max_steps=a.max_steps, lr=a.lr, batch_size=a.batch_size,
                         grad_accum=a.grad_accum, warmup_ratio=a.warmup_ratio, seed=a.seed, device=a.device,
                         dtype=a.dtype, checkpoint_every=a.checkpoint_every, trust_remote_code=a.trust_remote_code,
                         data_config=DataConfig(max_length=a.max_length, trg_lang=a.trg_lang))  # fmt: skip
    show = lambda r: print(
        f"[gdig] step {r['step']}/{r['total']} loss {r['loss']:.4f} lr {r['lr']:.2e}", file=sys.stderr, flush=True
    )  # noqa: E731
    out = finetune(cfg, resume=a.resume, on_log=show)
    print(f"[gdig] model saved: {out}", file=sys.stderr)


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="build the offline demo: corpus, model, a finished run; report chrF and AUROC")
    p.add_argument("--out", default=None, help="run directory (default: $GDIG_RUNS_DIR/demo or runs/demo)")
    p.add_argument("--cache", default=None, help="cache for corpus and model (default ~/.cache/gdig-studio)")


def run_demo(a: argparse.Namespace) -> None:
    import os
    import time

    from gdig.demo import DemoConfig, build_demo

    out = a.out or str(os.path.join(os.environ.get("GDIG_RUNS_DIR", "runs"), "demo"))
    t0 = time.time()
    progress = _Progress(False)
    try:
        run_dir, rep = build_demo(DemoConfig(out=out, cache=a.cache), on_progress=progress)
    finally:
        progress.close()
    print(f"[gdig] demo run: {run_dir} ({time.time() - t0:.0f} s; built in {rep['total_seconds']:.0f} s)",
          file=sys.stderr)  # fmt: skip
    print(f"held-out chrF of the demo model (greedy): {rep['chrf']:.1f}")
    for name, value in rep["auroc"].items():
        print(f"AUROC corrupted vs clean, {name}: {value:.3f}")


def score_config_from_args(a: argparse.Namespace) -> ScoreConfig:
    data = DataConfig(max_length=a.max_length, src_lang=a.src_lang, trg_lang=a.trg_lang)
    if a.prompt_template:
        data.prompt_template = a.prompt_template.encode().decode("unicode_escape")
    relative = a.damping_relative if a.damping is None else None
    if a.damping is None and relative is None:
        relative = 0.1
    return ScoreConfig(
        model=a.model, candidates=a.candidates, seeds=a.seeds, out=a.out, hessian=a.hessian, damping=a.damping,
        damping_relative=relative, normalize=a.normalize, seed_batch=a.seed_batch, modules=a.modules,
        batch_size=a.batch_size, token_budget=a.token_budget, fit_examples=a.fit_examples, fit_cache_mb=a.fit_cache_mb,
        sketch_dim=a.sketch_dim, seed_rank=a.seed_rank, chunk_size=a.chunk_size, device=a.device, dtype=a.dtype,
        random_state=a.random_state, trust_remote_code=a.trust_remote_code, umap=not a.no_umap, data=data,
        checkpoint_seconds=a.checkpoint_seconds,
    )  # fmt: skip


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
            self.stage = tqdm(total=max(state["total"], 1), desc=state["stage"], position=1, leave=False,
                              file=sys.stderr, dynamic_ncols=True)  # fmt: skip
            self.last = state["stage"]
        self.stage.total = max(state["total"], 1)
        self.stage.update(max(state["done"] - self.stage.n, 0))
        self.job.update(max(int(1000 * state.get("job_fraction", 0.0)) - self.job.n, 0))

    def close(self) -> None:
        for bar in (self.stage, self.job):
            if bar is not None:
                bar.close()


_JOB_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gdig", description="G-DIG instruction data selection")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_score(sub)
    _add_select(sub)
    _add_finetune(sub)
    _add_demo(sub)
    args = parser.parse_args(argv)
    try:
        if args.command == "score":
            from gdig.run import score
            from gdig.status import read_status, summary_line

            cfg = score_config_from_args(args)
            progress = _Progress(args.quiet)
            try:
                run_dir = score(cfg, resume=args.resume, on_progress=progress)
            finally:
                progress.close()
            if not args.quiet:
                print(f"[gdig] {run_dir}: {summary_line(read_status(run_dir) or {}, run_dir)}", file=sys.stderr)
        elif args.command == "select":
            run_select(args)
        elif args.command == "finetune":
            run_finetune(args)
        elif args.command == "demo":
            run_demo(args)
    except (ValueError, FileNotFoundError) as e:  # DataError, RunExistsError and bad settings
        print(f"gdig: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gdig: interrupted; continue with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
