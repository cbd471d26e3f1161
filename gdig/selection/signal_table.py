"""The table of signals beside influence: what each is called, which stored column it reads, which way is
better, which setting thresholds it and what the benchmarks say it catches. The scorer's reading
(gdig.selection.signals), the rule, the export, the tables and the pages ask this table; adding a signal is one
entry here plus the code that computes its column."""

from __future__ import annotations

from dataclasses import dataclass

HIGHER = "higher"  # the stored value is already higher-is-better
LOWER = "lower"  # lower is better: the score is its negative
TYPICAL = "typical"  # best near the pool's typical value: -|log x - median log x| (a ratio)


@dataclass(frozen=True)
class Signal:
    """One signal beside influence."""

    name: str  # its key in gdig.selection.signals.signal_scores and the rule
    column: str  # the candidates column a run stores
    label: str  # what a page calls it
    short: str  # its heading in the Explore and Clusters tables
    direction: str  # HIGHER | LOWER | TYPICAL
    catches: str | None = None  # what the benchmarks say it catches (bench/README.md), for the pages
    adequacy: bool = False  # from `gdig score --adequacy`; joins the rule only with SelectionConfig.adequacy
    threshold: str | None = None  # the SelectionConfig field that thresholds it (None: none)
    threshold_sign: float = 1.0  # keep scores >= sign x setting (-1: a setting that bounds a deviation)
    threshold_step: float = 0.1  # the page's step for that setting
    threshold_max: float | None = None  # and its largest value
    also_exported: tuple[str, ...] = ()  # stored columns exported with it (the detected languages)
    also_shown: tuple[tuple[str, str], ...] = ()  # (column, heading) shown with it in the tables


SIGNALS: tuple[Signal, ...] = (  # in the order the rule ranks them
    Signal(
        "length",
        "length_ratio",
        "length ratio",
        "length ratio",
        TYPICAL,
        catches="the length ratio truncations and additions",
        threshold="max_length_deviation",
        threshold_sign=-1.0,
    ),
    Signal(
        "language",
        "language_score",
        "language identification",
        "language",
        HIGHER,
        catches="language identification untranslated and wrong-language targets",
        threshold="min_language_score",
        threshold_step=0.05,
        threshold_max=1.0,
        also_exported=("src_lang_detected", "trg_lang_detected"),
        also_shown=(("trg_lang_detected", "target lang"),),
    ),
    Signal("loss", "loss", "loss", "loss", LOWER, catches="the loss disfluent targets"),
    Signal(
        "adequacy",
        "conditional_information",
        "adequacy (what the source explains of the target)",
        "adequacy",
        HIGHER,
        catches="adequacy (a run made with --adequacy) fluent additions and misaligned pairs",
        adequacy=True,
    ),
    Signal("dual", "dual_xent", "dual cross-entropy", "dual xent", HIGHER, adequacy=True),
)
BY_NAME = {s.name: s for s in SIGNALS}

# Stored columns that the export and the tables place among G-DIG's own scores rather than with the signals.
CORE_COLUMNS = ("loss",)


def label(name: str) -> str:
    """What a page calls signal `name` (the name itself when the table has no such signal)."""
    return BY_NAME[name].label if name in BY_NAME else name


def exported_columns() -> tuple[str, ...]:
    """The stored columns an export's `gdig` field carries after G-DIG's scores: the core ones, then each
    signal's own."""
    signal_columns = (c for s in SIGNALS for c in (s.column, *s.also_exported) if c not in CORE_COLUMNS)
    return CORE_COLUMNS + tuple(signal_columns)


def shown_columns() -> dict[str, str]:
    """column -> heading of the signals' columns in the Explore and Clusters tables (after the core ones)."""
    pairs = ((c, h) for s in SIGNALS for c, h in ((s.column, s.short), *s.also_shown) if c not in CORE_COLUMNS)
    return dict(pairs)


def thresholded() -> tuple[Signal, ...]:
    """The signals with a threshold setting of their own."""
    return tuple(s for s in SIGNALS if s.threshold)


def what_signals_catch() -> str:
    """What each catches (German->English with SmolLM2, bench/README.md), as one caption for the pages."""
    catches = "; ".join(s.catches for s in SIGNALS if s.catches)
    return (
        "What each catches (German->English with SmolLM2, bench/README.md): G-DIG misaligned, untranslated, "
        f"wrong-language, truncated and repeated pairs; {catches}. None reliably catches a translation that is "
        "fluent but wrong in one detail (a flipped negation)."
    )
