"""The workload a plan is made for (gdig.planning.plan): from a loaded context, with a short probe of the longest
batches for the activations' memory and the time per token; or from a model's config alone, built on the meta device
(no weights, nothing allocated), for models too large for this machine."""

from __future__ import annotations

import itertools
from pathlib import Path

import torch

from gdig.config import ScoreConfig
from gdig.engine.hooks import GradientCapture
from gdig.engine.measure import PeakSampler, resident_bytes, timed
from gdig.engine.memory import release_freed_memory
from gdig.pipeline.context import ScoreContext, by_length, fit_subset
from gdig.planning.plan import Workload

PROBE_BATCHES = 2


def model_bytes(model: torch.nn.Module) -> int:
    """Bytes of the parameters and buffers, in their dtype (meta tensors count the same)."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def workload_from_context(ctx: ScoreContext, runtime_bytes: int, probe: bool = True) -> Workload:
    """The run's workload; with `probe`, the activations and time measured on the longest batches."""
    cand = [len(t.input_ids) for t in ctx.cand_tok]
    w = Workload(
        dims=ctx.dims,
        model_bytes=model_bytes(ctx.model),
        runtime_bytes=runtime_bytes,
        cand_lengths=sorted(cand, reverse=True),
        seed_lengths=sorted((len(t.input_ids) for t in ctx.seed_tok), reverse=True),
        activation_bytes_per_token=activation_formula(ctx.model),
        fit_lengths=fit_lengths(ctx.cfg, cand),
    )
    if probe and cand:
        _probe(ctx, w)
    return w


def fit_lengths(cfg: ScoreConfig, lengths: list[int]) -> list[int] | None:
    """The fit set's token counts, longest first (gdig.pipeline.context.fit_subset of the candidates' `lengths` in file
    order); None when the fit set is every candidate."""
    chosen = fit_subset(len(lengths), cfg.fit_examples, cfg.random_state)
    return None if len(chosen) == len(lengths) else sorted((lengths[i] for i in chosen), reverse=True)


def _probe(ctx: ScoreContext, w: Workload) -> None:
    """Run the longest batches: their peak memory above the model gives the activations per token, and the
    later batch's time the seconds per padded token (the first pays for warm-up)."""
    batches = list(itertools.islice(ctx.batches(ctx.cand_tok, by_length(ctx.cand_tok)), PROBE_BATCHES))
    per_token_capture = 4 * sum(d_in + d_out for d_in, d_out in w.dims.values())
    with GradientCapture(ctx.model, ctx.tracked) as capture:
        release_freed_memory()  # freed blocks kept resident would absorb the batches' growth
        before = resident_bytes() if ctx.device.type != "cuda" else torch.cuda.memory_allocated(ctx.device)
        with PeakSampler(ctx.device) as peak:
            seconds = [timed(lambda b=b: capture.run(b)) for b in batches]
    tokens = batches[0].input_ids.numel()
    extra = max(peak.peak - before, 0) - per_token_capture * tokens
    w.activation_bytes_per_token = max(extra, 0) / max(tokens, 1)
    last = batches[-1].input_ids.numel()
    w.seconds_per_token = seconds[-1] / max(last, 1)
    w.flops_per_second = matmul_rate(ctx.device, max(w.dims.values(), key=lambda d: d[0] * d[1], default=(256, 256)))
    w.eigh_flops_per_second = eigh_rate(ctx.device, min(1536, max((max(d) for d in w.dims.values()), default=256)))


def matmul_rate(device: torch.device, dims: tuple[int, int], tokens: int = 512) -> float:
    """Float32 operations per second of a product shaped like the widest tracked module's algebra (tokens x
    d_out times d_out x d_in), the better of two tries after a warm-up."""
    d_in, d_out = dims
    x = torch.randn(tokens, d_out, device=device)
    y = torch.randn(d_out, d_in, device=device)
    return 2 * tokens * d_out * d_in / _device_seconds(device, lambda: x @ y, tries=2)


def eigh_rate(device: torch.device, n: int) -> float:
    """Nominal operations per second (9 n^3 per call) of a float64 symmetric eigendecomposition of size n."""
    x = torch.randn(n, n, dtype=torch.float64, device=device)
    x = x @ x.T
    return 9 * n**3 / _device_seconds(device, lambda: torch.linalg.eigh(x), tries=1)


def _device_seconds(device: torch.device, fn, tries: int) -> float:
    """The best of `tries` timed calls of fn, after one untimed call when trying more than once (warm-up),
    waiting for a GPU to finish each."""

    def call() -> None:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    if tries > 1:
        call()
    return max(min(timed(call) for _ in range(tries)), 1e-9)


def activation_formula(model: torch.nn.Module) -> float:
    """Bytes a decoder-only transformer keeps per token for its backward pass, when no probe can run: per layer
    about 12 hidden and 4 MLP-width values in the model's dtype, plus the float32 logits and their gradient."""
    c = model.config
    hidden = getattr(c, "hidden_size", None) or getattr(c, "n_embd", 0)
    width = getattr(c, "intermediate_size", None) or getattr(c, "n_inner", None) or 4 * hidden
    layers = getattr(c, "num_hidden_layers", None) or getattr(c, "n_layer", 0)
    size = next(model.parameters()).element_size()
    return layers * size * (12 * hidden + 4 * width) + 12 * c.vocab_size


def meta_workload(cfg: ScoreConfig, config_dir: str | Path, dtype: torch.dtype) -> tuple[Workload, torch.nn.Module]:
    """The workload of a model known only by its config.json, built on the meta device; token counts estimated
    at about 4 characters per token (said in the plan's notes)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from gdig.inputs.data import load_dataset
    from gdig.inputs.model import find_tracked_modules

    config = AutoConfig.from_pretrained(config_dir, trust_remote_code=cfg.trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=cfg.trust_remote_code)
        if cfg.adapter:
            model = meta_adapter(model, cfg.adapter)
    tracked = find_tracked_modules(model, cfg.tracked_modules())
    d = cfg.data
    lengths = []
    for path, role in ((cfg.candidates, "candidate"), (cfg.seeds, "seed")):
        ds = load_dataset(path, d.prompt_template, d.src_lang, d.trg_lang, role=role)
        lengths.append([min(d.max_length, 1 + len(e.prompt + e.target) // 4) for e in ds.examples])
    return Workload(
        dims={t.name: (t.d_in, t.d_out) for t in tracked},
        model_bytes=model_bytes(model),
        runtime_bytes=resident_bytes(),
        cand_lengths=sorted(lengths[0], reverse=True),
        seed_lengths=sorted(lengths[1], reverse=True),
        activation_bytes_per_token=activation_formula(model),
        fit_lengths=fit_lengths(cfg, lengths[0]),
    ), model


def meta_adapter(model: torch.nn.Module, adapter: str | Path) -> torch.nn.Module:
    """The meta model with the LoRA adapter its folder's adapter_config.json describes (no weights needed): the
    plan of `--adapter` for a model known by its config alone. Call under the meta device."""
    from peft import LoraConfig, get_peft_model

    from gdig.inputs.model import check_adapter_folder

    check_adapter_folder(adapter)
    return get_peft_model(model, LoraConfig.from_pretrained(str(adapter)))
