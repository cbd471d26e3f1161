"""Load a causal LM and its tokenizer, choose device and dtype, and find the modules whose weights we track."""

from __future__ import annotations

import hashlib
import inspect
import re
from dataclasses import dataclass

import torch
from torch import nn

from gdig.config import DEFAULT_MODULES

try:  # Hugging Face's transposed linear layer (GPT-2 family)
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - transformers always ships it today
    Conv1D = None


@dataclass
class TrackedModule:
    """A linear layer whose weight W (d_out x d_in) we take gradients of."""

    name: str
    module: nn.Module
    d_in: int
    d_out: int
    transposed: bool  # Conv1D stores W^T


def resolve_device(device: str = "auto") -> torch.device:
    """auto: CUDA, then MPS, then CPU; otherwise the device named."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but no CUDA GPU is available")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """auto: bfloat16 on GPUs that support it, float32 elsewhere; otherwise the dtype named."""
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in table:
        raise ValueError(f"--dtype must be auto, float32, bfloat16 or float16, got {dtype!r}")
    return table[dtype]


def load_model(
    name_or_path: str,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    adapter: str | None = None,
    gguf_file: str | None = None,
):
    """Load through `from_pretrained`: a local folder, a hub id already in the local cache, or a GGUF file
    (`name_or_path` ending in .gguf, or a folder plus `gguf_file`; dequantised to `dtype`). `adapter`: a PEFT
    adapter folder put on top, unmerged (its A and B matrices can then be tracked)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    folder, gguf = gguf_location(name_or_path, gguf_file)
    extra = {"gguf_file": gguf} if gguf else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code, **extra)
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch_dtype, trust_remote_code=trust_remote_code, **extra
        )
    except OSError as e:
        raise ValueError(f"could not load model '{name_or_path}': {e}") from None
    if gguf:  # dequantised on loading: from here on a plain model (save_pretrained writes plain weights)
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    if adapter:
        model = _with_adapter(model, adapter)
    prepare_tokenizer(tokenizer, model.get_input_embeddings().num_embeddings)
    model.to(dev)
    model.eval()
    return model, tokenizer


def gguf_location(name_or_path: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """(folder or id, GGUF file name or None) for from_pretrained: `x/model.gguf` is ("x", "model.gguf")."""
    if gguf_file:
        return name_or_path, gguf_file
    if name_or_path.lower().endswith(".gguf"):
        from pathlib import Path

        path = Path(name_or_path).expanduser()
        return str(path.parent), path.name
    return name_or_path, None


def _with_adapter(model, adapter: str):
    """The model with a PEFT adapter on top, unmerged and frozen."""
    from peft import PeftModel

    check_adapter_folder(adapter)
    return PeftModel.from_pretrained(model, adapter, is_trainable=False)


def check_adapter_folder(adapter) -> None:
    """A clear error unless `adapter` is a PEFT adapter's folder (it holds adapter_config.json)."""
    from pathlib import Path

    if not (Path(adapter) / "adapter_config.json").is_file():
        raise ValueError(
            f"--adapter {adapter}: no adapter_config.json there; give the folder of a PEFT adapter "
            "(gdig finetune --lora writes it to OUT/adapter)"
        )


def prepare_tokenizer(tokenizer, vocab_size: int | None = None) -> None:
    """A tokenizer without a usable pad token pads with EOS (padding positions are masked everywhere anyway).
    A pad token the tokenizer class added beyond the model's embeddings is not usable either."""
    outside = vocab_size is not None and tokenizer.pad_token_id is not None and tokenizer.pad_token_id >= vocab_size
    if tokenizer.pad_token_id is None or outside:
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has neither a pad token nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token


def find_tracked_modules(model: nn.Module, pattern: str = DEFAULT_MODULES) -> list[TrackedModule]:
    """Linear and Conv1D modules whose qualified name matches `pattern` (re.search)."""
    regex = re.compile(pattern)
    found, linear_names = [], []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            linear_names.append(name)
            if regex.search(name):
                found.append(TrackedModule(name, mod, mod.in_features, mod.out_features, transposed=False))
        elif Conv1D is not None and isinstance(mod, Conv1D):
            linear_names.append(name)
            if regex.search(name):
                d_in, d_out = mod.weight.shape
                found.append(TrackedModule(name, mod, d_in, d_out, transposed=True))
    if not found:
        sample = ", ".join(linear_names[:8]) or "none"
        raise ValueError(f"--modules {pattern!r} matches no linear layer; some names: {sample}")
    return found


def accepts_position_ids(model: nn.Module) -> bool:
    """Whether the model's forward takes position_ids (left padding needs them)."""
    return "position_ids" in inspect.signature(model.forward).parameters


def model_fingerprint(model: nn.Module) -> str:
    """Cheap content hash: names, shapes, dtypes and a strided sample of every parameter."""
    h = hashlib.sha256()
    h.update(type(model).__name__.encode())
    for name, p in model.named_parameters():
        flat = p.detach().reshape(-1)
        step = max(1, flat.numel() // 256)
        sample = flat[::step][:256].float().cpu().numpy()
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype}".encode())
        h.update(sample.tobytes())
        h.update(repr(float(flat.float().sum())).encode())
    return h.hexdigest()[:16]
