"""`gdig evaluate`: the closed loop. The same LoRA fine-tune of one base model on each selection, for several
training seeds, then on a held-out test set chrF and BLEU of greedy translations (sacrebleu) and the
teacher-forced loss of the references. Each finished fine-tune keeps its adapter, hypotheses and figures in
fits/<selection>-s<seed>/, so a cancelled evaluation resumes where it stopped; the report
(gdig.pipeline.evaluation_report) is written last. Every input is read and checked before anything trains."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gdig.atomic import write_json_atomic
from gdig.config import DataConfig
from gdig.inputs.data import Dataset, load_dataset
from gdig.names import check_name
from gdig.options import option
from gdig.rundir.layout import BOOKKEEPING

DATA_FLAGS = ("prompt_template", "src_lang", "trg_lang", "max_length")  # how records become prompts, as in scoring
SETTINGS = "evaluation.json"  # the settings and the selections' checksums, written first
REPORT = "report.json"  # written last: its presence means the evaluation is complete
REPORT_MD = "report.md"
FITS = "fits"
RESULT = "result.json"  # in a fit's folder: written when the fit and its evaluation are done
INPUTS = "inputs"  # the selections as files, when the app started the evaluation (gdig.studio.evaluations)


@dataclass
class EvaluationConfig:
    """Settings of `gdig evaluate`, saved as evaluation.json in its folder."""

    model: str = option(help="base model: a local folder, a hub id in the local cache, or a .gguf file")
    test: str = option(help="held-out test file with references (same formats as scoring)")
    out: str = option(help="folder to create for the evaluation (or to continue with --resume)")
    selections: list[str] = option(help="the selections to train on (JSONL exports)", cli=False, default_factory=list)
    names: list[str] = option(help="a name per selection (default: the file names)", cli=False, default_factory=list)
    seeds: int = option(3, "training seeds per selection (the spread between them is the noise)", minimum=1)
    allow_unequal: bool = option(False, "train on selections of different sizes (otherwise refused)")
    gguf_file: str | None = option(None, "GGUF file in the --model folder")
    lora_r: int = option(8, "rank of the LoRA adapters", minimum=1)
    lora_alpha: int = option(16, "LoRA alpha (the update is scaled by alpha / r)", minimum=1)
    epochs: float = option(1.0, "passes over each selection")
    lr: float = option(1e-3, "peak learning rate of the LoRA fine-tunes (AdamW, warm-up and decay)")
    batch_size: int = option(8, "examples per optimizer step", minimum=1)
    eval_batch_size: int = option(32, "test examples translated and scored at once", minimum=1)
    max_new_tokens: int = option(64, "longest greedy translation", minimum=1)
    device: str = option("auto", "auto, cpu, cuda, cuda:1, mps")
    data_config: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        if isinstance(self.data_config, dict):
            self.data_config = DataConfig(**self.data_config)
        if min(self.seeds, self.batch_size, self.eval_batch_size, self.max_new_tokens) < 1:
            raise ValueError("--seeds, --batch-size, --eval-batch-size and --max-new-tokens must be >= 1")
        if self.lr <= 0 or self.epochs <= 0:
            raise ValueError("--lr and --epochs must be > 0")

    def to_dict(self) -> dict:
        """The settings as saved (and compared on --resume)."""
        return dataclasses.asdict(self)


@dataclass
class Inputs:
    """The checked inputs: each selection's examples and checksum, and the test set."""

    names: list[str]
    selections: list[Dataset]
    sha256: list[str]
    test: Dataset

    @property
    def sizes(self) -> list[int]:
        """Examples per selection."""
        return [len(d) for d in self.selections]


def read_inputs(cfg: EvaluationConfig) -> Inputs:
    """Every selection and the test set read and validated (file, line and field in errors); refused: fewer
    than two selections, an empty one, names that clash, sizes that differ without allow_unequal."""
    if len(cfg.selections) < 2:
        raise ValueError("give at least two selections to compare")
    names = list(cfg.names) or _names_from_files(cfg.selections)
    if len(names) != len(cfg.selections):
        raise ValueError(f"{len(names)} names for {len(cfg.selections)} selections")
    for n in names:
        check_name(n, "selection name" + ("" if cfg.names else " (from its file's name; give --names)"))
    if len(set(names)) != len(names):
        raise ValueError(f"selection names must differ: {', '.join(names)}")
    d = cfg.data_config
    sets = [
        load_dataset(p, d.prompt_template, d.src_lang, d.trg_lang, role=f"selection {n!r}")
        for p, n in zip(cfg.selections, names, strict=True)
    ]
    sizes = [len(s) for s in sets]
    if len(set(sizes)) > 1 and not cfg.allow_unequal:
        listed = ", ".join(f"{n} {k:,}" for n, k in zip(names, sizes, strict=True))
        raise ValueError(f"the selections differ in size ({listed}): compare equal budgets, or --allow-unequal")
    test = load_dataset(cfg.test, d.prompt_template, d.src_lang, d.trg_lang, role="test")
    if any(not e.target.strip() for e in test.examples):
        raise ValueError(f"{cfg.test}: every test example needs a reference (an empty target found)")
    sha = [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in cfg.selections]
    return Inputs(names, sets, sha, test)


def _names_from_files(paths: list[str]) -> list[str]:
    stems = [Path(p).stem for p in paths]
    return stems if len(set(stems)) == len(stems) else [f"{s}-{i + 1}" for i, s in enumerate(stems)]


def fit_name(name: str, seed: int) -> str:
    """The folder of one fine-tune: the selection's name and the training seed."""
    return f"{name}-s{seed}"


def evaluate(cfg: EvaluationConfig, resume: bool = False, on_progress: Callable[[dict], None] | None = None) -> Path:
    """Fine-tune on every selection for every seed (seed by seed, so that a stopped evaluation has every selection
    at its first seeds), evaluate each on the test set, and write the report; returns the folder. Cancelled
    (gdig.rundir.status) when a cancel file appears; the finished fits are kept for resume=True."""
    from gdig.cancel import Cancelled
    from gdig.rundir.lock import writer_lock
    from gdig.rundir.status import Status, clear_cancel

    inputs = read_inputs(cfg)
    out = Path(cfg.out)
    _prepare(out, cfg, inputs, resume)
    with writer_lock(out):
        if resume:
            clear_cancel(out)  # a Cancel that stopped the last job is not this one's
        status = Status(out, on_progress)
        try:
            _fits_and_report(cfg, inputs, out, status)
        except BaseException as e:  # the app shows this, not the log's last lines
            status.fail("cancelled" if isinstance(e, Cancelled | KeyboardInterrupt) else f"{type(e).__name__}: {e}")
            raise
    return out


def _fits_and_report(cfg: EvaluationConfig, inputs: Inputs, out: Path, status) -> None:
    from gdig.pipeline.evaluation_report import build_report, write_report

    status.set_plan({"evaluate": 1.0})
    todo = [(n, s) for s in range(cfg.seeds) for n in inputs.names]
    units = _Units(cfg, inputs)
    status.update("evaluate", units.done(out, todo), units.total(todo), force=True)
    for name, seed in todo:
        if not (out / FITS / fit_name(name, seed) / RESULT).exists():
            done = units.done(out, todo)
            run_fit(
                cfg,
                inputs,
                name,
                seed,
                out,
                lambda k, done=done: status.update("evaluate", done + k, units.total(todo)),
            )
    results = [load_result(out, n, s) for n, s in todo]
    write_report(out, build_report(cfg, inputs, results))
    status.update("done", 1, 1, force=True)


class _Units:
    """Progress in work units: a fit's optimizer steps plus its test examples (translated and scored)."""

    def __init__(self, cfg: EvaluationConfig, inputs: Inputs):
        self.per = {
            n: steps(len(d), cfg) + len(inputs.test) for n, d in zip(inputs.names, inputs.selections, strict=True)
        }

    def total(self, todo) -> int:
        return sum(self.per[n] for n, _ in todo)

    def done(self, out: Path, todo) -> int:
        return sum(self.per[n] for n, s in todo if (out / FITS / fit_name(n, s) / RESULT).exists())


def steps(n: int, cfg: EvaluationConfig) -> int:
    """Optimizer steps of one fine-tune on n examples (as gdig.pipeline.finetuning counts them)."""
    return max(1, int(round(cfg.epochs * math.ceil(n / cfg.batch_size))))


def _prepare(out: Path, cfg: EvaluationConfig, inputs: Inputs, resume: bool) -> None:
    """Create the folder with its settings, or on resume check that the settings, selections and test set are
    the same. The number of seeds may change on resume: a fit depends on its own seed only, so more seeds extend
    an evaluation (tighter intervals) and fewer report on the first ones."""
    record = {"settings": cfg.to_dict(), "names": inputs.names, "sha256": inputs.sha256, "sizes": inputs.sizes}
    record["test_fingerprint"] = inputs.test.fingerprint  # a test file changed in place would mix two test sets
    saved = out / SETTINGS
    if saved.exists():
        if not resume:
            raise ValueError(f"{out} already holds an evaluation; choose another --out (or --resume it)")
        before = json.loads(saved.read_text())
        if _comparable({k: before.get(k) for k in record}) != _comparable(record):
            raise ValueError(f"{out} was started with other settings, selections or test set; choose another --out")
        write_json_atomic(saved, record)
        return
    if out.exists() and any(p.name not in BOOKKEEPING | {INPUTS} for p in out.iterdir()):
        raise ValueError(f"{out} exists and is not an evaluation folder; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(saved, record)


def _comparable(record: dict) -> dict:
    """What must match on resume. Not the number of seeds (see _prepare), nor where the files lie: the
    selections and the test set are compared by content (checksums, fingerprint), the model by its resolved
    path, and the folder is the one being resumed: an evaluation reached through a link, or moved with its
    inputs, resumes."""
    settings = {
        k: v for k, v in (record.get("settings") or {}).items() if k not in ("seeds", "selections", "test", "out")
    }
    if settings.get("model"):
        settings["model"] = os.path.realpath(settings["model"])
    return record | {"settings": settings}


def run_fit(cfg: EvaluationConfig, inputs: Inputs, name: str, seed: int, out: Path, progress: Callable[[int], None]):
    """One fine-tune and its evaluation; result.json last, the merged weights deleted (the adapter is kept)."""
    from gdig.pipeline.finetuning import FinetuneConfig, finetune

    folder = out / FITS / fit_name(name, seed)
    shutil.rmtree(folder, ignore_errors=True)  # a fit stopped half-way starts again
    folder.mkdir(parents=True)
    data = inputs.selections[inputs.names.index(name)]
    ft = FinetuneConfig(
        model=cfg.model,
        data=data.path,
        out=str(folder / "model"),
        gguf_file=cfg.gguf_file,
        lora=True,
        lora_r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        epochs=cfg.epochs,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        seed=seed,
        device=cfg.device,
        log_every=1,
        checkpoint_every=10**9,
        data_config=cfg.data_config,
    )
    t0 = time.time()
    finetune(ft, on_log=lambda rec: progress(int(rec["step"])))
    trained = time.time() - t0
    n_steps = steps(len(data), cfg)
    scores = score_model(folder / "model", inputs.test, cfg, lambda k: progress(n_steps + k))
    shutil.move(str(folder / "model" / "adapter"), str(folder / "adapter"))
    shutil.rmtree(folder / "model")
    result = {"selection": name, "seed": seed, "n_train": len(data), "train_seconds": trained}
    write_json_atomic(folder / RESULT, result | scores | {"eval_seconds": time.time() - t0 - trained})


def score_model(model_dir: Path, test: Dataset, cfg: EvaluationConfig, progress: Callable[[int], None]) -> dict:
    """Greedy translations of the test set and their chrF / BLEU, and the references' mean teacher-forced loss."""
    from gdig.inputs.model import load_model
    from gdig.pipeline.metrics import example_losses, translate, translation_metrics

    model, tok = load_model(str(model_dir), cfg.device, "float32")
    model.eval()
    hyps = translate(model, tok, test, cfg.eval_batch_size, cfg.max_new_tokens, on_batch=progress)
    losses = example_losses(model, tok, test, cfg.eval_batch_size, cfg.data_config.max_length)
    refs = [e.target for e in test.examples]
    return translation_metrics(hyps, refs) | {"loss": float(losses.mean()), "hypotheses": hyps}


def load_result(out: Path, name: str, seed: int) -> dict:
    """One finished fit's figures and hypotheses."""
    return json.loads((Path(out) / FITS / fit_name(name, seed) / RESULT).read_text())
