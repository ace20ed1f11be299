"""Published architectures (config fields only) for RANDOM-WEIGHT speed and memory runs at realistic sizes."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from .cache import cache_dir, publish_folder
from .offline import ModelUnavailableError, offline_default_model

# Config fields copied from each model's published config.json (architecture only: no weights needed).
KNOWN_SHAPES: dict[str, dict] = {
    "llama-3.1-8b": dict(
        architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=4096, intermediate_size=14336,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=128256,
        max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False,
        hidden_act="silu", rope_scaling={"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        bos_token_id=128000, eos_token_id=128001),
    "qwen2.5-1.5b": dict(
        architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_size=1536, intermediate_size=8960,
        num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2, vocab_size=151936,
        max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
        hidden_act="silu", use_sliding_window=False, bos_token_id=151643, eos_token_id=151645),
    "qwen2.5-7b": dict(
        architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_size=3584, intermediate_size=18944,
        num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
        max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=False,
        hidden_act="silu", use_sliding_window=False, bos_token_id=151643, eos_token_id=151645),
    "mistral-7b": dict(
        architectures=["MistralForCausalLM"], model_type="mistral", hidden_size=4096, intermediate_size=14336,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=32768,
        max_position_embeddings=32768, rms_norm_eps=1e-5, rope_theta=1000000.0, tie_word_embeddings=False,
        hidden_act="silu", sliding_window=None, bos_token_id=1, eos_token_id=2),
}


def random_weights_dir(shape: str, cache: Path | None = None) -> Path:
    """A config-only model folder of a known shape, for RANDOM-WEIGHT speed runs.

    Holds config.json (+ the course tokenizer, so engines can tokenize; its ids are all < vocab_size of
    every shape here) and a RANDOM_WEIGHTS.txt marker. Load with vLLM `load_format="dummy"` or transformers
    `AutoModelForCausalLM.from_config`. Never quote quality numbers from it.
    """
    key = shape.lower()
    if key not in KNOWN_SHAPES:
        raise ModelUnavailableError(f"Unknown shape {shape!r}; known shapes: {', '.join(KNOWN_SHAPES)}")
    dest = Path(cache or cache_dir()) / f"random-{key}"
    if (dest / "config.json").is_file():
        return dest
    src_tok = offline_default_model()
    with publish_folder(dest, lambda d: (d / "config.json").is_file()) as tmp:
        cfg = dict(KNOWN_SHAPES[key], torch_dtype="bfloat16", dtype="bfloat16")
        (tmp / "config.json").write_text(json.dumps(cfg, indent=1))
        for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
            if (src_tok / f).exists():
                shutil.copy(src_tok / f, tmp / f)
        (tmp / "RANDOM_WEIGHTS.txt").write_text(
            f"Architecture of {shape} with NO trained weights: for speed and memory experiments only.\n")
    return dest
