"""The Compare page's closed loop: the compared selections written as files in RUN/evaluations/NAME/inputs, checked,
then `gdig evaluate` started there as a background job (progress, cancel and resume like a scoring run); the
evaluations of a run listed with their state and report."""

from __future__ import annotations

import dataclasses
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from gdig.atomic import write_bytes_atomic
from gdig.config import DataConfig
from gdig.names import check_name
from gdig.options import to_args
from gdig.outputs.compare import NamedSelection
from gdig.pipeline.evaluation import DATA_FLAGS, INPUTS, EvaluationConfig, read_inputs
from gdig.pipeline.evaluation_report import read_report
from gdig.rundir.job import read_job_record
from gdig.rundir.layout import EVALUATIONS
from gdig.rundir.results import RunResults
from gdig.rundir.status import clear_cancel
from gdig.studio.jobs import JobState, job_state, spawn_worker


def default_model(run: RunResults) -> tuple[str, str | None]:
    """The base model to fine-tune: the run's model (with an adapter run, the base the adapter sat on)."""
    return run.settings.model, run.settings.gguf_file


def default_data(run: RunResults) -> DataConfig:
    """How the run made prompts (template, languages, length): the fine-tunes and the test use the same."""
    return dataclasses.replace(run.settings.data)


def default_test(run: RunResults) -> str:
    """A test.jsonl beside the run's candidate file (the demos have one), else nothing."""
    candidates = run.settings.candidates
    guess = Path(candidates).with_name("test.jsonl") if candidates else None
    return str(guess) if guess is not None and guess.is_file() else ""


def file_name(selection: str) -> str:
    """A compared selection's name as `gdig evaluate` names it (letters, digits, '-', '_', '.')."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", selection).strip("-._") or "selection"


def start_evaluation(run: RunResults, sels: list[NamedSelection], name: str, cfg: EvaluationConfig) -> Path:
    """Write the selections' original records as inputs, check everything as `gdig evaluate` would (an empty
    selection, unequal sizes, a bad test file: ValueError, nothing left behind), then start the job. `cfg`
    gives the model, test and training settings; its selections, names and out are set here."""
    name = check_name(name, "evaluation name")
    out = run.path / EVALUATIONS / name
    if out.exists():
        raise ValueError(f"an evaluation named {name!r} exists in this run; choose another name")
    names = [file_name(s.name) for s in sels]
    if len(set(names)) != len(names):
        raise ValueError("compare different selections: two of them have the same name")
    for s in sels:
        if not len(s.rows):
            raise ValueError(f"the selection {s.name!r} is empty: nothing to train on")
    from gdig.inputs.model_source import check_model_source

    check_model_source(cfg.model, gguf_file=cfg.gguf_file)
    try:
        files = [_write_records(run, s, out / INPUTS / f"{n}.jsonl") for s, n in zip(sels, names, strict=True)]
        cfg.selections, cfg.names, cfg.out = [str(f) for f in files], names, str(out)
        read_inputs(cfg)
    except (ValueError, OSError) as e:
        shutil.rmtree(out, ignore_errors=True)
        raise ValueError(str(e)) from None
    clear_cancel(out)
    return spawn_worker(out, evaluate_command(cfg))


def _write_records(run: RunResults, sel: NamedSelection, path: Path) -> Path:
    records = run.candidates["record"].iloc[sel.rows].tolist()  # each pair's original record, as scored
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, "".join(r + "\n" for r in records).encode("utf-8"))
    return path


def evaluate_command(cfg: EvaluationConfig) -> list[str]:
    """`python -m gdig evaluate ...` for these settings."""
    cmd = [sys.executable, "-m", "gdig", "evaluate", *to_args(cfg), "--selections", *cfg.selections]
    cmd += ["--names", *cfg.names, *to_args(cfg.data_config, only=DATA_FLAGS)]
    return [*cmd, "--quiet"]


def resume_evaluation(out: str | Path) -> Path:
    """Start a stopped evaluation again with its own command and --resume (its finished fine-tunes are kept)."""
    out = Path(out)
    state = job_state(out)
    if state.running:
        raise ValueError(f"the evaluation {out.name!r} is running")
    cmd = (read_job_record(out) or {}).get("cmd")
    if not cmd:
        raise ValueError(f"the evaluation {out.name!r} was not started from here: run gdig evaluate --resume")
    clear_cancel(out)
    return spawn_worker(out, cmd + ([] if "--resume" in cmd else ["--resume"]))


@dataclass
class EvaluationEntry:
    """One evaluation of a run, as the Compare page lists it."""

    name: str
    path: Path
    state: JobState
    report: dict | None


def list_evaluations(run_dir: str | Path) -> list[EvaluationEntry]:
    """The run's evaluations, the last started first (a running one does not move as it writes its status)."""
    root = Path(run_dir) / EVALUATIONS
    folders = [d for d in root.glob("*") if d.is_dir()] if root.is_dir() else []
    folders.sort(key=_started, reverse=True)
    return [EvaluationEntry(d.name, d, job_state(d), read_report(d)) for d in folders]


def _started(folder: Path) -> float:
    try:
        return float((read_job_record(folder) or {})["started"])
    except (KeyError, TypeError, ValueError):
        return folder.stat().st_mtime


def running_evaluations(run_dir: str | Path) -> list[str]:
    """The names of the run's evaluations whose job is running (the run cannot be deleted under them)."""
    return [e.name for e in list_evaluations(run_dir) if e.state.running]


def evaluation_config(
    model: str, test: str, gguf_file: str | None = None, data: DataConfig | None = None, **settings
) -> EvaluationConfig:
    """Settings for start_evaluation from the page's fields (unknown keys refused by the dataclass)."""
    return EvaluationConfig(
        model=model, test=test, out="", gguf_file=gguf_file, data_config=data or DataConfig(), **settings
    )
