"""Background worker processes for the app: start `gdig score` detached from the Streamlit script, follow it
through status.json, cancel it. A reload or a second tab re-attaches because all state is on disk."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gdig.atomic import write_json_atomic
from gdig.config import ScoreConfig
from gdig.names import check_name
from gdig.rundir import job as job_files
from gdig.rundir.layout import CONFIG, INDEX_META, JOB, STATUS, folder_bytes, read_config
from gdig.rundir.lock import lock_holder
from gdig.rundir.status import clear_cancel, estimate, mark_starting, read_status, request_cancel


@dataclass
class JobState:
    """A job as the app shows it: stage, counters, rates and ETAs, running or finished or failed."""

    run_dir: Path
    stage: str
    done: int
    total: int
    error: str | None
    running: bool
    finished: bool
    rate: float | None  # items per second in the current stage
    eta_seconds: float | None  # left in the current stage
    job_fraction: float = 0.0  # of the whole job (all stages), by its plan
    job_eta_seconds: float | None = None  # left in the whole job

    @property
    def fraction(self) -> float:
        """Share of the current stage done."""
        return 0.0 if self.total <= 0 else min(1.0, self.done / self.total)


def pid_alive(pid: int | None) -> bool:
    """Whether a process is running (a zombie child counts as stopped)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of this process counts as dead
        waited, _ = os.waitpid(pid, os.WNOHANG)
        return waited == 0
    except ChildProcessError:
        return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """Whether pid is another process's zombie (the app server's finished worker, not yet reaped; Linux)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[:1] == ["Z"]


def start_job(cfg: ScoreConfig, resume: bool = False, processes: int | None = None) -> Path:
    """Write the settings, then run the worker in its own session (it outlives the page): one process, or
    `processes` under torchrun (a resumed job keeps its earlier number unless told otherwise)."""
    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    if job_state(run_dir).running:
        raise ValueError(f"{run_dir} already has a running job")
    holder = lock_holder(run_dir)
    if holder:  # a job started elsewhere (a terminal, torchrun) is writing it
        raise ValueError(f"{run_dir} is being written by another job ({holder})")
    processes = processes or job_processes(run_dir)
    clear_cancel(run_dir)
    settings = job_files.write_job_settings(run_dir, cfg.to_dict())
    args = ["gdig.studio.jobs", str(settings)] + (["--resume"] if resume else [])
    return spawn_worker(run_dir, worker_command(args, processes), processes)


def worker_command(module_args: list[str], processes: int = 1) -> list[str]:
    """`python -m MODULE ARGS`, or the same under torchrun on this machine with `processes` processes."""
    if processes <= 1:
        return [sys.executable, "-m", *module_args]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    return [*torchrun, "-m", *module_args]


def process_choices() -> tuple[int, int, str]:
    """The New run page's (default, most, kind): a process per GPU, else CPU processes (one thread) to the cores."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus:
        return gpus, gpus, "GPU"
    return 1, max(os.cpu_count() or 1, 1), "CPU"


def job_processes(run_dir: Path) -> int:
    """How many processes the run's last job had (1 when unknown)."""
    try:
        return int((job_files.read_job_record(run_dir) or {}).get("processes", 1))
    except (TypeError, ValueError):
        return 1


def start_new_run(root: str | Path, name: str, model: str, inputs: list, settings: dict, processes: int = 1) -> Path:
    """Check a new run's name, model and files, then start its worker (`processes` of them under torchrun);
    nothing is started or left behind when a check fails (ValueError with the reason). `inputs` are the
    candidate and seed files: a path, or an upload as (file name, bytes), saved under root/.inputs/NAME."""
    return start_job(new_run_config(root, name, model, inputs, settings), processes=processes)


def plan_new_run(
    root: str | Path, name: str, model: str, inputs: list, settings: dict, timeout: float = 600, processes: int = 1
) -> str:
    """The memory and time plan of a new run (`gdig score --plan`, in its own process so the app never loads
    the model), as text, per process of `processes`; nothing is kept (uploads saved for the probe are removed)."""
    import shutil
    import tempfile

    cfg = new_run_config(root, name, model, inputs, settings)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "settings.json"
            write_json_atomic(path, cfg.to_dict())
            cmd = [sys.executable, "-m", "gdig.studio.jobs", str(path), "--plan", str(processes)]
            root_dir = Path(__file__).resolve().parents[2]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=root_dir)
    finally:
        shutil.rmtree(Path(root) / ".inputs" / Path(cfg.out).name, ignore_errors=True)
    if done.returncode != 0:
        raise ValueError((done.stderr.strip().splitlines() or ["the plan failed"])[-1])
    return done.stdout


def new_run_config(root: str | Path, name: str, model: str, inputs: list, settings: dict) -> ScoreConfig:
    """A new run's settings, its name, model and files checked (uploads under root/.inputs/NAME, gone on failure)."""
    from gdig.config import DataConfig
    from gdig.inputs.data import load_dataset
    from gdig.inputs.model_source import check_model_source
    from gdig.inputs.readers import DataError
    from gdig.names import safe_file_name

    root = Path(root)
    run_dir = root / check_name(name, "run name")
    if run_dir.exists():
        raise ValueError(f"A run named '{run_dir.name}' exists already; choose another name.")
    if not model.strip() or not all(inputs):
        raise ValueError("Give a model, a candidate file and a seed file.")
    check_model_source(model)
    folder = root / ".inputs" / run_dir.name
    paths = []
    for item in inputs:
        if isinstance(item, str | Path):
            paths.append(str(item))
            continue
        folder.mkdir(parents=True, exist_ok=True)
        saved = folder / safe_file_name(item[0])
        saved.write_bytes(item[1])
        paths.append(str(saved))
    settings = dict(settings)
    data = DataConfig(**{f.name: settings.pop(f.name) for f in dataclasses.fields(DataConfig) if f.name in settings})
    try:  # a bad file is reported here, before anything runs
        for p, role in zip(paths, ("candidate", "seed"), strict=True):
            load_dataset(p, data.prompt_template, data.src_lang, data.trg_lang, role=role)
        cfg = ScoreConfig(
            model=model.strip(), candidates=paths[0], seeds=paths[1], out=str(run_dir), data=data, **settings
        )
    except (DataError, ValueError) as e:
        shutil.rmtree(folder, ignore_errors=True)
        raise ValueError(f"Bad input file: {e}" if isinstance(e, DataError) else str(e)) from None
    return cfg


def start_demo_job(run_dir: str | Path, cache: str | None = None, base: str | None = None) -> Path:
    """Build the built-in demo (`gdig demo`) in the background into run_dir; with `base` (a model folder or
    GGUF file), the pretrained demo (`gdig demo --pretrained --base BASE`)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if job_state(run_dir).running:
        return run_dir
    clear_cancel(run_dir)
    cmd = [sys.executable, "-m", "gdig", "demo", "--out", str(run_dir)] + (["--cache", cache] if cache else [])
    cmd += ["--pretrained", "--base", str(base)] if base else []
    return spawn_worker(run_dir, cmd)


def spawn_worker(run_dir: Path, cmd: list[str], processes: int = 1) -> Path:
    """Run `cmd` in its own session (it outlives the page), its output in run_dir's worker.log, its pid in job.json."""
    log = job_files.open_worker_log(run_dir)
    env = os.environ | {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    root = Path(__file__).resolve().parents[2]  # the checkout, so `python -m gdig` finds this package
    mark_starting(run_dir)
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=root, env=env, start_new_session=True
    )
    job_files.write_job_record(run_dir, proc.pid, cmd, processes)
    return run_dir


def run_worker(settings_path: str | Path, resume: bool = False, plan: int = 0) -> int:
    """Entry point of the worker process: `python -m gdig.studio.jobs SETTINGS.json [--resume | --plan N]` (the
    plan per process of N)."""
    cfg = ScoreConfig.from_dict(json.loads(Path(settings_path).read_text()))
    if plan:
        from gdig.pipeline.run import make_plan
        from gdig.planning.report import plan_report

        print(plan_report(make_plan(cfg, processes=plan), cfg))
        return 0
    from gdig.pipeline.run import score

    score(cfg, resume=resume)
    return 0


def cancel_job(run_dir: str | Path, grace_seconds: float = 10.0) -> None:
    """Ask the worker to stop between batches; terminate it if it does not within the grace period."""
    run_dir = Path(run_dir)
    request_cancel(run_dir)
    pid = _job_pid(run_dir)
    deadline = time.time() + grace_seconds
    while pid_alive(pid) and time.time() < deadline:
        time.sleep(0.1)
    if pid_alive(pid) or (pid and _zombie(pid)):  # a leader that ended may leave its ranks in the group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)


def _job_pid(run_dir: Path) -> int | None:
    try:
        return int((job_files.read_job_record(run_dir) or {})["pid"])
    except (KeyError, TypeError, ValueError):
        status = read_status(run_dir)
        return status.get("pid") if status else None


def job_state(run_dir: str | Path) -> JobState:
    """The job of run_dir from its status.json and worker pid (a dead worker without an error is a failure)."""
    run_dir = Path(run_dir)
    st: dict[str, Any] = read_status(run_dir) or {}
    finished = st.get("stage") == "done" and not st.get("error")
    alive = pid_alive(_job_pid(run_dir)) or (pid_alive(st.get("pid")) and st.get("pid") != os.getpid())
    running = alive and not finished and not st.get("error")
    error = st.get("error")
    started_job = job_files.job_started(run_dir)
    if not finished and not running and not error and (st or started_job):
        error = "the worker stopped without finishing" + _log_tail(run_dir)
    done, total = int(st.get("done", 0)), int(st.get("total", 0))
    eta = estimate(st)
    live = running and eta.rate is not None
    return JobState(
        run_dir,
        st.get("stage", "not started"),
        done,
        total,
        error,
        running,
        finished,
        eta.rate if live else None,
        eta.stage_seconds if live else None,
        1.0 if finished else eta.job_fraction,
        eta.job_seconds if running else None,
    )


def _log_tail(run_dir: Path, lines: int = 3) -> str:
    tail = job_files.worker_log_tail(run_dir, lines)
    return (": " + " | ".join(tail)) if tail else ""


def list_runs(root: str | Path, details: bool = False) -> list[dict[str, Any]]:
    """Run folders under root, newest first, with their state; with `details`, also a one-line settings summary
    and the size on disk (a walk of every file: for the Runs table, not for every page's run picker)."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for d in root.iterdir():
        marks = (STATUS, CONFIG, JOB)  # JOB: started, before the worker writes its status
        if d.is_dir() and not d.name.startswith(".") and any((d / m).exists() for m in marks):
            state = job_state(d)
            label = "finished" if state.finished else "running" if state.running else "failed" if state.error else "?"
            row = {"name": d.name, "path": d, "state": label, "mtime": d.stat().st_mtime, "job": state}
            if details:
                row |= {"settings": settings_summary(d), "bytes": folder_bytes(d)}
            out.append(row)
    return sorted(out, key=lambda r: -r["mtime"])


def settings_summary(run_dir: Path) -> str:
    """The settings a curator tells runs apart by: sizes, curvature, normalisation, damping, model."""
    try:
        cfg = read_config(run_dir) or {}
        s, n, m = cfg["settings"], cfg.get("n_candidates"), cfg.get("n_seeds")
    except KeyError:
        s, n, m = job_files.read_job_settings(run_dir), None, None
        if s is None:
            return ""
    damping = f"λ={s['damping']:g}" if s.get("damping") is not None else f"λ={s.get('damping_relative')}×mean"
    sizes = f"{n:,} x {m:,} · " if n is not None and m is not None else ""
    line = f"{sizes}{s.get('hessian')} · {s.get('normalize')} · {damping} · {Path(str(s.get('model'))).name}"
    return line + _index_note(run_dir, cfg if n is not None else {})


def _index_note(run_dir: Path, cfg: dict) -> str:
    """Whether a finished run can answer new seeds and questions: its index, or how to add one."""
    if not cfg.get("finished"):
        return ""
    if cfg.get("scored_from_index"):
        return f" · seeds scored from the index of {Path(cfg['scored_from_index']['parent']).name}"
    meta = run_dir / INDEX_META
    return f" · index k={json.loads(meta.read_text())['k']:,}" if meta.exists() else " · no index (gdig index)"


def delete_run(root: str | Path, name: str) -> None:
    """Remove run `name` from the runs folder (and its uploaded inputs); refused while its job runs."""
    import shutil

    root = Path(root)
    run_dir = root / check_name(name, "run name")
    if not run_dir.is_dir():
        raise ValueError(f"no run named '{name}' in {root}")
    if job_state(run_dir).running:
        raise ValueError(f"run '{name}' is still running: cancel it first")
    shutil.rmtree(run_dir)
    shutil.rmtree(root / ".inputs" / name, ignore_errors=True)


if __name__ == "__main__":
    args = sys.argv[2:]
    sys.exit(run_worker(sys.argv[1], resume="--resume" in args, plan=int(args[1]) if args[:1] == ["--plan"] else 0))
