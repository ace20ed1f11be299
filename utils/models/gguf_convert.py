"""GGUF -> a normal transformers folder (bf16 safetensors + fast tokenizer + chat template), once per machine.

transformers dequantizes every block of the GGUF while loading; the course keeps the result in bf16. The
converted weights therefore carry the GGUF's rounding (Q4_1 for the default): not the original checkpoint.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

FORMAT_VERSION = 4                   # bump when the conversion changes: old caches are rebuilt
STAMP = "course_provenance.json"


def is_converted(folder: Path) -> bool:
    stamp = folder / STAMP
    if not (stamp.is_file() and (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()
            and any(folder.glob("*.safetensors"))):
        return False
    try:
        return json.loads(stamp.read_text()).get("format_version") == FORMAT_VERSION
    except ValueError:
        return False


def gguf_general_name(path: Path) -> str | None:
    """The `general.name` field of a GGUF file's metadata (read without loading any tensor)."""
    from gguf import GGUFReader
    field = GGUFReader(str(path)).fields.get("general.name")
    if field is None:
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")


def convert_gguf(gguf: Path, out: Path, *, source: str, quant: str, licence: str) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()            # 272 per-tensor bars would bury the one line that matters

    folder, name = str(gguf.parent), gguf.name
    # dequantize=True unpacks every quantized block into a dense tensor while loading.
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
    del gguf_model
    model.save_pretrained(out)

    save_fast_tokenizer(AutoTokenizer.from_pretrained(folder, gguf_file=name), out)
    (out / STAMP).write_text(json.dumps({
        "format_version": FORMAT_VERSION,
        "source": f"{source} ({quant}, dequantized to bfloat16)",
        "note": f"weights carry {quant} rounding: this is not the original bf16 checkpoint",
        "licence": licence,
        "params": sum(p.numel() for p in model.parameters()),
        "torch": torch.__version__, "transformers": transformers.__version__,
    }, indent=1))


def save_fast_tokenizer(tokenizer, out: Path) -> None:
    """Save the GGUF tokenizer so that every transformers version loads the *fast* (byte-level BPE) one.

    SmolLM2 and Qwen2 use a GPT-2 style byte-level BPE. Saved as-is, tokenizer_config.json can name
    `LlamaTokenizer`, and some transformers releases (5.17 among them) then rebuild a sentencepiece-style
    pre-tokenizer around the vocabulary: wrong ids, lost spaces. Naming PreTrainedTokenizerFast makes
    AutoTokenizer (and vLLM) read tokenizer.json verbatim.
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
