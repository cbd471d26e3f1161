"""The report of `gdig evaluate`: per selection the mean and sd over training seeds of chrF, BLEU and the held-out
loss, and for each pair of selections the paired difference (the same seed trains both: its data order and LoRA
initialisation are shared, so the seed's own luck cancels) with a 95% t interval over seeds, and a plain verdict."""

from __future__ import annotations

import datetime as dt
import itertools
import json
from pathlib import Path

import numpy as np

from gdig.atomic import write_bytes_atomic, write_json_atomic

METRICS = {"chrf": ("chrF", True), "bleu": ("BLEU", True), "loss": ("held-out loss", False)}  # name, higher is better


def build_report(cfg, inputs, results: list[dict]) -> dict:
    """The report from every fit's result (gdig.pipeline.evaluation.load_result)."""
    by = {(r["selection"], r["seed"]): r for r in results}
    seeds = sorted({r["seed"] for r in results})
    per = {n: _per_selection([by[n, s] for s in seeds]) for n in inputs.names}
    paired = [
        paired_difference([by[a, s][m] for s in seeds], [by[b, s][m] for s in seeds]) | {"a": a, "b": b, "metric": m}
        for a, b in itertools.combinations(inputs.names, 2)
        for m in METRICS
    ]
    fits = [{k: v for k, v in r.items() if k != "hypotheses"} for r in results]
    return {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": cfg.to_dict(),
        "names": inputs.names,
        "sizes": inputs.sizes,
        "sha256": inputs.sha256,
        "n_test": len(inputs.test),
        "seeds": seeds,
        "per_selection": per,
        "paired": paired,
        "verdicts": [verdict(p) for p in paired if p["metric"] in ("chrf", "loss")],
        "fits": fits,
    }


def _per_selection(rows: list[dict]) -> dict:
    out = {"n_train": rows[0]["n_train"]}
    for m in METRICS:
        v = np.array([r[m] for r in rows], np.float64)
        out[m] = {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else None, "values": v.tolist()}
    return out


def paired_difference(a: list[float], b: list[float], level: float = 0.95) -> dict:
    """b - a per seed: mean, sd and the t interval of the mean (None with one seed)."""
    from scipy import stats

    d = np.asarray(b, np.float64) - np.asarray(a, np.float64)
    out = {"mean": float(d.mean()), "n": len(d), "sd": None, "low": None, "high": None}
    if len(d) > 1:
        sd = float(d.std(ddof=1))
        half = float(stats.t.ppf(0.5 + level / 2, len(d) - 1)) * sd / np.sqrt(len(d))
        out |= {"sd": sd, "low": out["mean"] - half, "high": out["mean"] + half}
    return out


def verdict(p: dict) -> str:
    """One sentence: which selection trains the better model on this metric, or that the seeds cannot tell."""
    label, higher_better = METRICS[p["metric"]]
    diff = f"{p['mean']:+.3f}" + (f" [{p['low']:+.3f}, {p['high']:+.3f}]" if p["low"] is not None else "")
    head = f"{label}: {p['b']} - {p['a']} = {diff}"
    if p["low"] is None:
        return f"{head}; one seed, no interval"
    if p["low"] <= 0 <= p["high"]:
        return f"{head}; no difference the {p['n']} seeds can tell"
    b_better = (p["mean"] > 0) == higher_better
    return f"{head}; {p['b'] if b_better else p['a']} is better"


def markdown(report: dict) -> str:
    """The report as a page: the table per selection, the paired differences, the verdicts."""
    lines = [
        f"# Evaluation: {', '.join(report['names'])}",
        "",
        f"Base model `{report['settings']['model']}`, test `{report['settings']['test']}` ({report['n_test']} "
        f"examples), LoRA r={report['settings']['lora_r']}, {report['settings']['epochs']} epoch(s), seeds "
        f"{', '.join(map(str, report['seeds']))}; mean ± sd over seeds.",
        "",
        "| selection | pairs | chrF | BLEU | held-out loss |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in report["names"]:
        s = report["per_selection"][name]
        lines.append(f"| {name} | {s['n_train']:,} | " + " | ".join(_cell(s[m]) for m in METRICS) + " |")
    lines += ["", "Paired differences (second minus first, 95% t interval over seeds):", ""]
    lines += [f"- {v}" for v in report["verdicts"]]
    return "\n".join(lines) + "\n"


def _cell(m: dict) -> str:
    return f"{m['mean']:.3f}" + (f" ± {m['sd']:.3f}" if m["sd"] is not None else "")


def write_report(out: Path, report: dict) -> None:
    """report.md, then report.json (last: its presence means the evaluation is complete)."""
    from gdig.pipeline.evaluation import REPORT, REPORT_MD

    write_bytes_atomic(Path(out) / REPORT_MD, markdown(report).encode())
    write_json_atomic(Path(out) / REPORT, report)


def read_report(out: str | Path) -> dict | None:
    """A finished evaluation's report, or None."""
    from gdig.pipeline.evaluation import REPORT

    path = Path(out) / REPORT
    return json.loads(path.read_text()) if path.exists() else None


def evaluations_summary(run_dir: str | Path) -> list[dict]:
    """The finished evaluations of a run (RUN/evaluations/*), in a few lines each: recorded in every export's
    manifest, so that a selection ships with the evidence of what training on it did."""
    from gdig.rundir.layout import EVALUATIONS

    out = []
    for folder in sorted((Path(run_dir) / EVALUATIONS).glob("*")):
        report = read_report(folder) if folder.is_dir() else None
        if report is not None:
            means = {n: {m: round(s[m]["mean"], 4) for m in METRICS} for n, s in report["per_selection"].items()}
            out.append(
                {"name": folder.name, "report": f"{EVALUATIONS}/{folder.name}/report.json", "seeds": report["seeds"]}
                | {"means": means, "verdicts": report["verdicts"]}
            )
    return out
