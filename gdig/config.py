"""Typed settings for every G-DIG stage, saved as JSON beside the outputs so a run can be reproduced."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from gdig.hessians import APPROXIMATIONS, HESSIANS, hessian
from gdig.options import option

DEFAULT_PROMPT = 'Translate the following text into {trg_lang}\n\nText:\n"{src_text}"\n\n'
# MLP projections of every transformer block: `mlp.*` (Llama, Qwen2, Mistral, Gemma, GPT-2, BLOOM, GPT-NeoX),
# `fc1`/`fc2` (OPT), `feed_forward.*` and `ffn.*` (other families).
DEFAULT_MODULES = r"(^|\.)(mlp|feed_forward|ffn)\.[A-Za-z0-9_]+$|(^|\.)fc[12]$"

# The adapters' matrices of a PEFT LoRA model (`...q_proj.lora_A.default`): tracked when --adapter is given.
LORA_MODULES = r"\.lora_[AB]\.[A-Za-z0-9_]+$"

NORMALIZATIONS = ("none", "unit", "relatif")
INDEX_DTYPES = ("int8", "float16", "float32")
INDEX_PROJECTIONS = ("countsketch", "kronecker")  # gdig.engine.index.PROJECTIONS (config stays torch-free)


@dataclass
class DataConfig:
    """How input files become prompts and targets."""

    prompt_template: str = option(
        DEFAULT_PROMPT,
        "format string of the prompt, with {src_text}, {src_lang}, {trg_lang} (\\n for a line break)",
        label="Prompt template",
    )
    src_lang: str | None = option(None, "source language when a record does not say", label="Default source language")
    trg_lang: str | None = option(None, "target language when a record does not say", label="Default target language")
    max_length: int = option(
        512, "longest tokenized example; longer ones are truncated", label="Max length (tokens)", minimum=2
    )


@dataclass
class ScoreConfig:
    """Settings of `gdig score` (DESIGN sections 1 and 4)."""

    model: str = option(help="local model folder or hub id (already in the local cache)")
    candidates: str = option(help="candidate pool: .jsonl/.json/.csv/.tsv/.parquet or SRC,TGT")
    seeds: str = option(
        help="trusted seed set, same formats: a few hundred clean pairs of the pool's own domains and direction "
        "(on three real de->en pools 256 of them ranked corrupted pairs at AUROC 0.93 / 0.90 / 0.92, 64 of them "
        "0.88 / 0.86, 64 general FLORES seeds 0.71)"
    )
    out: str = option(help="run directory to create (or to continue with --resume)")
    adapter: str | None = option(
        None,
        "PEFT adapter folder put on --model unmerged; its A and B matrices are tracked (unless --modules is given)",
        label="LoRA adapter folder",
    )
    gguf_file: str | None = option(None, "GGUF file in the --model folder (or give the .gguf file as --model)")
    hessian: str = option(
        APPROXIMATIONS[0], "; ".join(h.help for h in HESSIANS.values()), choices=APPROXIMATIONS, label="Hessian"
    )
    damping: float | None = option(None, "absolute damping lambda (instead of --damping-relative)")
    damping_relative: float | None = option(
        0.1, "lambda = R x the mean eigenvalue, per module", label="Relative damping", minimum=1e-6
    )
    # unit (cosine in the preconditioned metric) by measurement: bench/README.md; "none" is the paper's I(z, s)
    normalize: str = option(
        "unit",
        "unit: cosine in the preconditioned metric; none: the paper's raw I(z,s); relatif: RelatIF",
        choices=NORMALIZATIONS,
        label="Normalisation",
    )
    seed_batch: int = option(1, "average seed gradients in groups of k", minimum=1)
    modules: str = option(
        DEFAULT_MODULES, "regex (re.search) over module names to track", label="Tracked modules (regex)"
    )
    batch_size: int = option(8, "examples per batch", minimum=1)
    token_budget: int | None = option(None, "max padded tokens per batch (overrides --batch-size)")
    fit_examples: int | None = option(
        None,
        "fit the curvature on a random subset of this many candidates (none: all)",
        label="Fit curvature on (0 = all)",
        minimum=0,
    )
    # The curvature fit's captures (a and g, or a module's per-example gradients where smaller: LoRA matrices) are
    # kept and reused by EK-FAC's second pass and by scoring when they fit in this many MiB. Exact either way: only
    # time and memory change.
    fit_cache_mb: int | None = option(
        None,
        "memory for reusing the curvature pass's captures later (default: a "
        "third of available memory, at most 8192; 0 = recompute)",
    )
    sketch_dim: int = option(
        1024, "dimension of the gradient sketches clustered for diversity", label="Sketch dimension", minimum=16
    )
    # k of the gradient index: chosen by bench/bench_index.py (bench/README.md gives its agreement with exact runs)
    index_dim: int = option(
        16384,
        "dimension of the gradient index that new seed sets and queries are scored from without another pass "
        "over the pool (0: no index)",
        label="Index dimension",
        minimum=0,
    )
    index_projection: str = option(
        "countsketch",
        "how the whitened gradients are projected to k dimensions (countsketch: the whole gradient, the error of a "
        "dense Gaussian projection; kronecker: per module, LoGra's structure)",
        choices=INDEX_PROJECTIONS,
    )
    index_dtype: str = option(
        "int8",
        "storage of the index's rows: int8 (a scale per row; the agreement of float16 at half its bytes), float16, "
        "or float32 (exact up to the projection)",
        choices=INDEX_DTYPES,
    )
    seed_rank: int | None = option(None, "keep preconditioned seed gradients at this rank (large layers); none: dense")
    seed_memory_mb: int | None = option(
        None,
        "memory for the preconditioned seeds: dense when they fit, else the largest rank that fits (default: a "
        "quarter of available memory, at most 8192)",
    )
    chunk_size: int = option(256, "candidates per resumable chunk", minimum=1)
    # Exact for any P (tests/pipeline/test_partitions.py): only the memory and the passes change.
    module_partitions: int = option(
        0,
        "process the tracked modules in P groups, one pass over the data each (fit, seeds, scores): the peak "
        "memory is the largest group's factors and captures instead of all of them, the time about P forward "
        "and backward passes; the results are the same, bit for bit (0: one group when the memory plan fits, "
        "else the fewest that fit)",
        label="Module partitions (0 = auto)",
        minimum=0,
    )
    # Exact for any number of processes (tests/engine/test_distributed.py): only where the work runs changes.
    shard_factors: bool = option(
        False,
        "under torchrun: each process takes whole module groups (group g on process g mod N) over all the data, "
        "instead of a share of the data in every group, so that it holds only its groups' factors and seeds: the "
        "memory per process falls with the processes (at least one group each: --module-partitions 0 makes as many "
        "as the processes or more), every process makes every forward and backward pass, and the results are the "
        "same, bit for bit",
        label="Shard the factors across processes",
    )
    memory_gb: float | None = option(
        None,
        "the memory this job may use, in GiB (the GPU's on a GPU): the memory check, the module groups chosen "
        "(--module-partitions 0), the fit's kept captures and the seeds' rank keep within it, for a machine shared "
        "with other work (default: what the device has available)",
        label="Memory limit (GiB, 0 = available)",
        minimum=0.0,
    )
    # Each save writes the factors' size in float64 (about 2x factors.safetensors: 2.2 GB, 3.3 s, for SmolLM2's
    # adapters; about 100 GB at 7B), so saves are also spaced by 20 x the last one's time (FitCheckpoint).
    checkpoint_seconds: float = option(
        300.0,
        "save the curvature fit's partial sums this often (and on cancel) for --resume; these periodic saves are "
        "spaced so that they take at most 5% of the fit's time",
        label="Save the fit's progress every (s)",
        minimum=1.0,
    )
    adequacy: bool = option(
        False,
        "also store two adequacy signals per candidate from the same model (gdig.engine.adequacy): the information "
        "of the target its source explains, and the dual conditional cross-entropy with the reverse direction; three "
        "forward passes per candidate (bench/README.md: what they catch and what they do not)",
        label="Adequacy signals",
    )
    umap: bool = option(
        True,
        "compute the 2-D map of the sketches at the end (the app computes it when first shown otherwise)",
        flag="--no-umap",
    )
    padding_side: str = option(
        "right", "results do not depend on it; left suits models trained that way", choices=("left", "right")
    )
    device: str = option("auto", "auto, cpu, cuda, cuda:1, mps", label="Device")
    dtype: str = option(
        "auto",
        "auto: bfloat16 on GPUs that support it, else float32",
        choices=("auto", "float32", "bfloat16", "float16"),
    )
    random_state: int = option(0, "seed of the fit subset and the sketch projection")
    trust_remote_code: bool = option(False, "run the model repository's own Python code", label="Trust remote code")
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        if isinstance(self.data, dict):
            self.data = DataConfig(**self.data)
        self.validate()

    def validate(self) -> None:
        """Refuse impossible settings with the flag to change, before any work starts."""
        hessian(self.hessian)
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
        if self.seed_memory_mb is not None and self.seed_memory_mb < 1:
            raise ValueError(f"--seed-memory-mb must be >= 1, got {self.seed_memory_mb}")
        if self.memory_gb is not None and self.memory_gb <= 0:
            raise ValueError(f"--memory-gb must be > 0, got {self.memory_gb}")
        if self.seed_rank is not None and self.seed_rank < 1:
            raise ValueError(f"--seed-rank must be >= 1, got {self.seed_rank}")
        if self.index_dim < 0:
            raise ValueError(f"--index-dim must be >= 0 (0: no index), got {self.index_dim}")
        if self.index_projection not in INDEX_PROJECTIONS:
            raise ValueError(f"--index-projection must be one of {', '.join(INDEX_PROJECTIONS)}")
        if self.index_dtype not in INDEX_DTYPES:
            raise ValueError(f"--index-dtype must be one of {', '.join(INDEX_DTYPES)}, got {self.index_dtype!r}")
        if self.data.max_length < 2:
            raise ValueError(f"--max-length must be >= 2, got {self.data.max_length}")

    def tracked_modules(self) -> str:
        """The modules regex in effect: the adapters' A and B when an adapter is scored with the default modules."""
        return LORA_MODULES if self.adapter and self.modules == DEFAULT_MODULES else self.modules

    def curvature_settings(self) -> dict[str, Any]:
        """Settings that the fitted factors depend on (used in their fingerprint)."""
        return {
            "hessian": self.hessian,
            "modules": self.tracked_modules(),
            "max_length": self.data.max_length,
            "prompt_template": self.data.prompt_template,
            "fit_examples": self.fit_examples,
            "random_state": self.random_state,
        }

    def to_dict(self) -> dict[str, Any]:
        """Every setting as JSON-able values (saved beside every output)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScoreConfig:
        """Settings saved by to_dict (unknown keys from other versions are ignored, the data settings' too)."""
        known = {f.name for f in dataclasses.fields(cls)}
        kept = {k: v for k, v in d.items() if k in known}
        if isinstance(kept.get("data"), dict):
            data_fields = {f.name for f in dataclasses.fields(DataConfig)}
            kept["data"] = DataConfig(**{k: v for k, v in kept["data"].items() if k in data_fields})
        return cls(**kept)
