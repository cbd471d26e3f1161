"""`gdig finetune`: step 1 of G-DIG, training a causal LM on the candidate pool with the same prompt masking and
loss as scoring (each example's mean target-token loss). Full fine-tuning or LoRA (peft); AdamW with linear
warm-up and decay; gradient accumulation; bf16 autocast on GPU; resumable checkpoints; the result is a standard
Hugging Face folder (safetensors) that `gdig score` loads like any model."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from gdig.atomic import write_json_atomic
from gdig.config import DataConfig
from gdig.engine.hooks import collate, per_example_loss
from gdig.inputs.data import load_dataset, tokenize_dataset
from gdig.inputs.model import load_model, resolve_device
from gdig.options import option

CHECKPOINT = "checkpoint"


@dataclass
class FinetuneConfig:
    """Settings of `gdig finetune`, saved as finetune.json beside the trained model."""

    model: str = option(help="local model folder or hub id (already in the local cache)")
    data: str = option(help="training file, same formats as scoring")
    out: str = option(help="folder for the trained model (a standard Hugging Face folder)")
    gguf_file: str | None = option(None, "GGUF file in the --model folder (or give the .gguf file as --model)")
    lora: bool = option(False, "train LoRA adapters (peft) and save the merged model")
    lora_r: int = option(8, "rank of the LoRA adapters")
    lora_alpha: int = option(16, "LoRA alpha (the update is scaled by alpha / r)")
    lora_targets: str | None = option(
        None, "regex over module names for LoRA; none: every linear layer of the blocks", cli=False
    )
    epochs: float = option(1.0, "passes over the data")
    max_steps: int | None = option(None, "optimizer steps (overrides --epochs)")
    lr: float = option(2e-5, "peak learning rate (AdamW, linear warm-up and decay)")
    batch_size: int = option(8, "examples per micro-batch")
    grad_accum: int = option(1, "micro-batches per optimizer step")
    warmup_ratio: float = option(0.05, "share of the steps spent warming up")
    weight_decay: float = option(0.0, "AdamW weight decay", cli=False)
    max_grad_norm: float = option(1.0, "gradient clipping norm", cli=False)
    seed: int = option(0, "seed of the data order and LoRA initialisation")
    device: str = option("auto", "auto, cpu, cuda, cuda:1, mps")
    dtype: str = option(
        "auto", "auto: bfloat16 autocast on GPUs that support it", choices=("auto", "float32", "bfloat16")
    )
    log_every: int = option(10, "optimizer steps between log lines", cli=False)
    checkpoint_every: int = option(200, "optimizer steps between resumable checkpoints")
    trust_remote_code: bool = option(False, "run the model repository's own Python code")
    data_config: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        if isinstance(self.data_config, dict):
            self.data_config = DataConfig(**self.data_config)
        for name in ("batch_size", "grad_accum", "lora_r", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if self.lr <= 0 or self.epochs <= 0:
            raise ValueError("--lr and --epochs must be > 0")


def _lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(warmup, 1)
        return max(0.0, (total - step) / max(total - warmup, 1))

    return f


def _wrap_lora(model, cfg: FinetuneConfig):
    from peft import LoraConfig, get_peft_model

    targets = cfg.lora_targets or r".*\.(layers|h|blocks)\.\d+\..*"
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    import re

    chosen = sorted({n.split(".")[-1] for n in names if re.fullmatch(targets, n) or re.search(targets, n)})
    if not chosen:
        raise ValueError(f"--lora-targets {targets!r} matches no linear layer")
    lc = LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules=chosen, lora_dropout=0.0, task_type="CAUSAL_LM"
    )
    return get_peft_model(model, lc)


def finetune(cfg: FinetuneConfig, resume: bool = False, on_log: Callable[[dict], None] | None = None) -> Path:
    """Train and save to cfg.out; returns the model folder. Under torchrun each process takes its share of every
    optimizer step's examples and DistributedDataParallel averages the gradients (the same step as one process
    would take, up to rounding); rank 0 writes the log, the checkpoints and the model."""
    from gdig.engine.distributed import join_world, leave_world

    world, device = join_world(cfg.device)
    cfg = dataclasses.replace(cfg, device=device)
    out = Path(cfg.out)
    try:
        if world.is_main:
            _check_out(out, resume)
        world.barrier("preparing the output folder")
        return _train(cfg, world, resume, on_log)
    finally:
        leave_world()


def _check_out(out: Path, resume: bool) -> None:
    if out.exists() and (out / "config.json").exists() and not resume:
        raise ValueError(f"{out} already holds a model; choose another --out (or --resume an interrupted run)")
    out.mkdir(parents=True, exist_ok=True)


def _train(cfg: FinetuneConfig, world, resume: bool, on_log: Callable[[dict], None] | None) -> Path:
    out = Path(cfg.out)
    ckpt = out / CHECKPOINT
    torch.manual_seed(cfg.seed)
    start_from = str(ckpt / "model") if resume and (ckpt / "state.json").exists() else cfg.model
    gguf = cfg.gguf_file if start_from == cfg.model or cfg.lora else None
    source = cfg.model if cfg.lora else start_from
    model, tok = load_model(source, cfg.device, "float32", cfg.trust_remote_code, gguf_file=gguf)
    dev = resolve_device(cfg.device)
    d = cfg.data_config
    ds = load_dataset(cfg.data, d.prompt_template, d.src_lang, d.trg_lang, role="training")
    toks, report = tokenize_dataset(tok, ds, d.max_length)
    if cfg.lora:
        model = _wrap_lora(model, cfg)
        if start_from != cfg.model:
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            set_peft_model_state_dict(model, load_file(str(ckpt / "adapter.safetensors"), device=str(dev)))
    model.to(dev)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    trained = _parallel(model, world, dev)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(toks) / (cfg.batch_size * cfg.grad_accum))
    total = cfg.max_steps or max(1, int(round(cfg.epochs * steps_per_epoch)))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(int(cfg.warmup_ratio * total), total))
    step = 0
    if start_from != cfg.model:
        state = torch.load(ckpt / "optimizer.pt", map_location=dev, weights_only=True)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step = json.loads((ckpt / "state.json").read_text())["step"]
    use_bf16 = dev.type == "cuda" and cfg.dtype in ("auto", "bfloat16") and torch.cuda.is_bf16_supported()
    t0 = time.time()
    losses: list[float] = []
    per_step = cfg.batch_size * cfg.grad_accum
    while step < total:
        epoch, in_epoch = divmod(step, steps_per_epoch)
        order = np.random.default_rng(cfg.seed + epoch).permutation(len(toks))
        for s in range(in_epoch, steps_per_epoch):
            if step >= total:
                break
            opt.zero_grad(set_to_none=True)
            chunk = order[s * per_step : (s + 1) * per_step].tolist()
            losses.append(_accumulate(trained, toks, chunk, tok.pad_token_id, cfg.batch_size, world, dev, use_bf16))
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            sched.step()
            step += 1
            if step % cfg.log_every == 0 or step == total:
                rec = {"step": step, "total": total, "epoch": step / steps_per_epoch}
                rec |= {"loss": _mean_loss(losses, world, dev), "lr": sched.get_last_lr()[0]}
                losses.clear()
                if world.is_main:
                    _log(out, rec | {"seconds": time.time() - t0}, on_log)
            if step % cfg.checkpoint_every == 0 and step < total:
                if world.is_main:
                    _save_checkpoint(model, tok, opt, sched, step, ckpt, cfg.lora)
                world.barrier("saving a checkpoint")
    if world.is_main:
        _save_final(model, tok, out, cfg)
        summary = {"settings": dataclasses.asdict(cfg), "steps": total, "seconds": time.time() - t0}
        write_json_atomic(out / "finetune.json", summary | {"tokenization": report.summary(), "processes": world.size})
        shutil.rmtree(ckpt, ignore_errors=True)
    world.barrier("saving the model")
    return out


def _parallel(model, world, dev):
    """The model as each step runs it: wrapped in DistributedDataParallel with several processes."""
    if not world.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)


def _accumulate(model, toks, chunk: list[int], pad_id: int, micro: int, world, dev, use_bf16: bool) -> float:
    """Gradients of one optimizer step: the mean loss over `chunk`'s examples, of which this rank computes its
    share (every size-th example) in micro-batches; DDP averages over the ranks, hence the factor `size`. A rank
    with no example in a short last step still joins the gradient exchange, with a zero-weighted example."""
    part = chunk[world.rank :: world.size]
    weight = world.size / len(chunk)
    if not part:
        part, weight = chunk[:1], 0.0
    pieces = [part[i : i + micro] for i in range(0, len(part), micro)]
    total = 0.0
    for j, idx in enumerate(pieces):
        sync = j == len(pieces) - 1 or not world.active
        with contextlib.nullcontext() if sync else model.no_sync():
            b = collate([toks[i] for i in idx], idx, pad_id)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
                logits = model(
                    input_ids=b.input_ids.to(dev), attention_mask=b.attention_mask.to(dev), use_cache=False
                ).logits
            loss = per_example_loss(logits, b.labels.to(dev))[0].sum() * weight
            loss.backward()
            total += float(loss.detach())
    return total


def _mean_loss(losses: list[float], world, dev) -> float:
    """The mean training loss of the steps since the last log line, over every rank's examples."""
    t = torch.tensor([sum(losses), len(losses)], dtype=torch.float64, device=world.device if world.active else dev)
    world.all_reduce([t], "averaging the logged loss")
    return float(t[0] / t[1]) if t[1] else float("nan")


def _log(out: Path, rec: dict, on_log: Callable[[dict], None] | None) -> None:
    with open(out / "train_log.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")
    if on_log:
        on_log(rec)


def _save_checkpoint(model, tok, opt, sched, step: int, ckpt: Path, lora: bool) -> None:
    tmp = ckpt.with_name(CHECKPOINT + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if lora:
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        save_file(
            {k: v.contiguous() for k, v in get_peft_model_state_dict(model).items()}, str(tmp / "adapter.safetensors")
        )
    else:
        model.save_pretrained(tmp / "model")
        tok.save_pretrained(tmp / "model")
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step}))
    shutil.rmtree(ckpt, ignore_errors=True)
    tmp.rename(ckpt)


def _save_final(model, tok, out: Path, cfg: FinetuneConfig) -> None:
    model.eval()
    if cfg.lora:
        model.save_pretrained(out / "adapter")  # the adapter alone, for peft users
        model = model.merge_and_unload()
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
