"""Load the selected model and tokenizer on the right device and dtype; read its config; label it."""
from __future__ import annotations

import os
from pathlib import Path

from .offline import ModelUnavailableError
from .resolve import known_names, resolve_model
from .shapes import KNOWN_SHAPES


def pick_device(device: str | None = None) -> str:
    import torch
    if device:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError("device='cuda' was asked for, but torch sees no CUDA GPU here. Use device='cpu'.")
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(device: str):
    """bf16 on GPU (what serving uses); float32 on CPU, where bf16 matmuls are slow on many CPUs."""
    import torch
    return torch.bfloat16 if device.startswith("cuda") else torch.float32


def load_tokenizer(model: str | None = None):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(resolve_model(model))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(model: str | None = None, device: str | None = None, dtype=None, attn_implementation: str = "sdpa"):
    """Load a causal LM in eval mode on `device` (default: cuda if present) and `dtype` (bf16 GPU / fp32 CPU)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()          # per-tensor loading bars drown notebook output
    path = resolve_model(model)
    device = pick_device(device)
    dtype = dtype or pick_dtype(device)
    m = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn_implementation)
    return m.to(device).eval()


def model_config(model: str | None = None):
    """The transformers config of the selected model, a folder, a hub id or a known random shape name."""
    from transformers import AutoConfig
    if model and str(model).lower() in KNOWN_SHAPES:
        fields = dict(KNOWN_SHAPES[str(model).lower()])
        return AutoConfig.for_model(fields.pop("model_type"), **fields)
    try:
        return AutoConfig.from_pretrained(resolve_model(model))
    except ModelUnavailableError:
        raise
    except (OSError, ValueError) as e:
        raise ModelUnavailableError(f"No config for {model!r} ({e}). Known here: {known_names()}") from None


def describe(model_path: str | os.PathLike) -> str:
    """One label for plots and tables: name plus '(RANDOM WEIGHTS)' when that is what it is."""
    p = Path(model_path)
    label = p.name if p.exists() else str(model_path)
    if (p / "RANDOM_WEIGHTS.txt").exists():
        label += " (RANDOM WEIGHTS)"
    return label
