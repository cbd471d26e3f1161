"""Where a model comes from, checked before any work starts: a local folder with a config, or a hub id already
in the local Hugging Face cache. Nothing is downloaded, so a missing model is said plainly, not as a failed
connection to the hub minutes into a job."""

from __future__ import annotations

from pathlib import Path


class ModelSourceError(ValueError):
    """The model cannot be found where G-DIG looks for one; the message lists the places it looked."""


def check_model_source(name_or_path: str, cache_dir: str | None = None) -> str:
    """Return a short description of where the model is, or raise ModelSourceError naming what was looked for."""
    name = name_or_path.strip()
    if not name:
        raise ModelSourceError("no model given: pass a local model folder or a hub id in the local cache")
    path = Path(name).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return f"local folder {path}"
        raise ModelSourceError(
            f"model '{name}': the folder {path.resolve()} has no config.json, so it is not a Hugging Face model "
            "folder (save one with `model.save_pretrained(folder)` and `tokenizer.save_pretrained(folder)`)"
        )
    if path.is_file():
        raise ModelSourceError(
            f"model '{name}' is a file; give the folder that holds config.json and the weights "
            "(GGUF files are not supported by this version)"
        )
    cached = _cached_hub_config(name, cache_dir)
    if cached is not None:
        return f"hub id {name} in the local cache ({cached.parent})"
    hub_cache = cache_dir or _cache_dir()
    raise ModelSourceError(
        f"model '{name}' was not found. Looked for (1) a local folder with config.json at {path.resolve()}: no "
        f"such folder; (2) the hub id '{name}' in the local Hugging Face cache ({hub_cache}): not there. "
        "Nothing is downloaded: give a local folder, or put the model in the cache first on a machine with a "
        "network (`huggingface-cli download ID`)."
    )


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
