"""The one model switch: an argument or $COURSE_MODEL -> something transformers and vLLM can load.

Accepted, in this order: an offline short name (`smollm2-135m`, `qwen2.5-coder-0.5b`, ...: converted from a
PyPI-shipped GGUF, no hub), a local model folder, a hub id `org/name` (online, or already in the local hub
cache). Unset means the offline default. Every refusal says what was understood and what to do instead.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

from .offline import DEFAULT_OFFLINE, OFFLINE_MODELS, ModelUnavailableError, offline_model_dir

MODEL_ENV = "COURSE_MODEL"


def _looks_like_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and all(name.split("/"))


def hub_reachable(timeout: float = 2.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:
        return False


def known_names() -> str:
    from .shapes import KNOWN_SHAPES
    return (f"offline models: {', '.join(OFFLINE_MODELS)}; random-weight shapes (speed only): "
            f"{', '.join(KNOWN_SHAPES)}")


def offline_key(name: str) -> str | None:
    """The registry key for a short name or a model's own name, case-insensitive ('SmolLM2-135M-Instruct')."""
    low = name.lower()
    for key, spec in OFFLINE_MODELS.items():
        if low in (key, spec.name.lower()) or low == spec.name.lower().removesuffix("-instruct"):
            return key
    return None


def selected_model(model: str | os.PathLike | None = None) -> str:
    """What the switch says, before resolving: the argument, else $COURSE_MODEL, else the default's short name."""
    return str(model) if model else (os.environ.get(MODEL_ENV, "").strip() or DEFAULT_OFFLINE)


def resolve_model(model: str | os.PathLike | None = None) -> str:
    """Turn the switch into a local folder (str) or a hub id that will load here."""
    choice = selected_model(model)
    key = offline_key(choice)
    if key:
        return str(offline_model_dir(key))
    local = Path(choice).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelUnavailableError(f"{local} is a folder but has no config.json: not a model folder.")
        return str(local)
    if local.is_absolute() or choice.startswith((".", "~")) or (
            "/" in choice and local.parent != Path(".") and local.parent.is_dir()):
        # A path whose folder exists (models/smol with ./models present) is a local typo, not a hub id.
        raise ModelUnavailableError(
            f"{MODEL_ENV}={choice!r} looks like a local path, but {local.resolve()} does not exist. Check the "
            f"spelling, or use a short name ({known_names()}).")
    if not _looks_like_hub_id(choice):
        raise ModelUnavailableError(
            f"Unknown model {choice!r}: not an offline short name, not a local folder, not a hub id 'org/name'. "
            f"Known here: {known_names()}. Unset {MODEL_ENV} for the offline default.")
    if _in_hub_cache(choice) or hub_reachable():
        return choice
    raise ModelUnavailableError(
        f"{choice!r} is a Hugging Face hub id, but the hub cannot be reached from here (offline or "
        f"HF_HUB_OFFLINE=1) and it is not in the local hub cache. Offline, use a short name "
        f"({', '.join(OFFLINE_MODELS)}), or download the model on a connected machine and pass its folder.")
