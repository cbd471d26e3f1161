"""Typed settings for every G-DIG stage, saved as JSON beside the outputs so a run can be reproduced."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from gdig.atomic import write_json_atomic  # noqa: F401 - re-exported for callers

DEFAULT_PROMPT = 'Translate the following text into {trg_lang}\n\nText:\n"{src_text}"\n\n'
# MLP projections of every transformer block: `mlp.*` (Llama, Qwen2, Mistral, Gemma, GPT-2, BLOOM, GPT-NeoX),
# `fc1`/`fc2` (OPT), `feed_forward.*` and `ffn.*` (other families).
DEFAULT_MODULES = r"(^|\.)(mlp|feed_forward|ffn)\.[A-Za-z0-9_]+$|(^|\.)fc[12]$"

HESSIANS = ("ekfac", "kfac", "identity")
NORMALIZATIONS = ("none", "unit", "relatif")


@dataclass
class DataConfig:
    """How input files become prompts and targets."""

    prompt_template: str = DEFAULT_PROMPT
    src_lang: str | None = None  # default when a record has no src_lang
    trg_lang: str | None = None  # default when a record has no trg_lang
    max_length: int = 512


@dataclass
class ScoreConfig:
    """Settings of `gdig score` (DESIGN sections 1 and 4)."""

    model: str
    candidates: str
    seeds: str
    out: str
    hessian: str = "ekfac"
    damping: float | None = None  # absolute lambda; None means use damping_relative
    damping_relative: float | None = 0.1
    # unit (cosine in the preconditioned metric) by measurement: bench/README.md; "none" is the paper's I(z, s)
    normalize: str = "unit"
    seed_batch: int = 1
    modules: str = DEFAULT_MODULES
    batch_size: int = 8
    token_budget: int | None = None  # max tokens (padded) per batch; overrides batch_size when set
    fit_examples: int | None = None
    # The curvature fit's captured a and g are kept and reused by EK-FAC's second pass and by scoring when they
    # fit in this many MiB (None = auto: a third of the available memory, at most 8 GiB; 0 = always recompute).
    # Exact either way: only time and memory change.
    fit_cache_mb: int | None = None
    sketch_dim: int = 1024
    seed_rank: int | None = None  # low-rank seed factorisation; None = dense
    chunk_size: int = 256  # candidates per resumable chunk
    # The curvature fit saves its partial sums this often (and when cancelled), so --resume continues the fit
    # where it stopped. Each save writes the factors' size in float64 (about 2x factors.safetensors).
    checkpoint_seconds: float = 60.0
    umap: bool = True  # compute the 2-D map of the sketches at the end of the run
    padding_side: str = "right"  # results do not depend on it; left suits models trained that way
    device: str = "auto"
    dtype: str = "auto"
    random_state: int = 0
    trust_remote_code: bool = False
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        if isinstance(self.data, dict):
            self.data = DataConfig(**self.data)
        self.validate()

    def validate(self) -> None:
        if self.hessian not in HESSIANS:
            raise ValueError(f"--hessian must be one of {', '.join(HESSIANS)}, got {self.hessian!r}")
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"--normalize must be one of {', '.join(NORMALIZATIONS)}, got {self.normalize!r}")
        if self.damping is not None and self.damping < 0:
            raise ValueError(f"--damping must be >= 0, got {self.damping}")
        if self.damping is None and (self.damping_relative is None or self.damping_relative <= 0):
            raise ValueError("set --damping X (absolute) or --damping-relative R > 0")
        for name in ("seed_batch", "batch_size", "sketch_dim", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"padding side must be left or right, got {self.padding_side!r}")
        if self.checkpoint_seconds < 0:
            raise ValueError(f"--checkpoint-seconds must be >= 0, got {self.checkpoint_seconds}")
        if self.fit_cache_mb is not None and self.fit_cache_mb < 0:
            raise ValueError(f"--fit-cache-mb must be >= 0, got {self.fit_cache_mb}")
        if self.fit_examples is not None and self.fit_examples < 1:
            raise ValueError(f"--fit-examples must be >= 1, got {self.fit_examples}")
        if self.seed_rank is not None and self.seed_rank < 1:
            raise ValueError(f"--seed-rank must be >= 1, got {self.seed_rank}")
        if self.data.max_length < 2:
            raise ValueError(f"--max-length must be >= 2, got {self.data.max_length}")

    def curvature_settings(self) -> dict[str, Any]:
        """Settings that the fitted factors depend on (used in their fingerprint)."""
        return {
            "hessian": self.hessian,
            "modules": self.modules,
            "max_length": self.data.max_length,
            "prompt_template": self.data.prompt_template,
            "fit_examples": self.fit_examples,
            "random_state": self.random_state,
        }

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScoreConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})
