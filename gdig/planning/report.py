"""What a plan says to a person (`gdig score --plan`, the app's plan, a refused run): the table of stages and
parts, and when it does not fit, which knob saves how much."""

from __future__ import annotations

from gdig.config import ScoreConfig
from gdig.planning.plan import Plan

GiB = 2**30


MODULE_PARTS = (
    "captures (one batch)",
    "per-example gradients (one batch)",
    "reused captures",
    "factor sums (float64)",
    "factors",
    "eigenvalue sums (float64)",
    "seeds",
    "seed captures (one chunk)",
    "index hashes",
)
BATCH_PARTS = ("activations (one batch)", "captures (one batch)", "per-example gradients (one batch)")


def advice(plan: Plan, cfg: ScoreConfig) -> list[str]:
    """What each knob would save at the worst stage, largest first."""
    stage, _ = plan.worst
    parts = plan.stages[stage]
    batch = sum(parts.get(k, 0) for k in BATCH_PARTS)
    per_module = sum(parts.get(k, 0) for k in MODULE_PARTS)
    tips = [
        (
            per_module / 2,
            "--modules tracking half of the layers: captures, factors and seeds scale with the tracked modules' sizes",
        ),
        (
            batch / 2,
            f"--batch-size {max(1, cfg.batch_size // 2)} (or a --token-budget): halves one batch's "
            "activations and captures",
        ),
        (
            parts.get("seeds", 0) * 0.75,
            "--seed-rank (a quarter of the current rank) or a smaller "
            "--seed-memory-mb: seeds at a quarter of their size",
        ),
        (
            max(parts.get("reused captures", 0), parts.get("reused captures (kept so far)", 0)),
            "--fit-cache-mb 0: recompute captures instead of keeping them",
        ),
    ]
    if cfg.dtype == "float32":
        tips.append((parts.get("model", 0) / 2, "--dtype bfloat16 (on a GPU): halves the model and its activations"))
    lines = [f"{text}: saves about {_fmt(saved)}" for saved, text in sorted(tips, reverse=True) if saved > 0]
    if plan.partitions_to_fit and plan.partitions_to_fit > plan.partitions:
        groups = plan.partitions_to_fit
        lines.insert(0, f"--module-partitions {groups} (or 0, the default, which chooses it): fits, {groups} passes")
    return lines


def format_plan(plan: Plan) -> str:
    """The plan as a table a person reads: one line per stage and its parts, then time and the verdict."""
    lines = [f"memory available: {_fmt(plan.available_bytes)}"]
    for stage, parts in plan.stages.items():
        secs = plan.seconds.get(stage)
        when = f", about {secs:,.0f} s" if secs is not None else ""
        lines.append(f"{stage:15s} {_fmt(plan.peak(stage)):>10s}{when}")
        lines += [f"    {name:34s} {_fmt(b):>10s}" for name, b in parts.items() if b > 0]
    seeds = "dense" if plan.seed_rank is None else f"rank {plan.seed_rank}"
    stage, peak = plan.worst
    verdict = "fits" if plan.fits else "DOES NOT FIT"
    lines.append(f"seeds kept {seeds}; peak {_fmt(peak)} at {stage}: {verdict}")
    lines += [f"disk: {plan.disk.describe()}"] if plan.disk is not None else []
    return "\n".join(lines + [f"note: {n}" for n in plan.notes])


def plan_report(plan: Plan, cfg: ScoreConfig) -> str:
    """The plan's table and, when it does not fit, what each knob would save: what --plan prints."""
    tips = "" if plan.fits else "\nto fit, try:\n  " + "\n  ".join(advice(plan, cfg))
    return format_plan(plan) + tips


def _fmt(n: float) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB / 10 else f"{n / 2**20:.1f} MiB"
