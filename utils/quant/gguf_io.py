"""Real GGUF files (llama.cpp's format) written and read with the `gguf` package.

GGUF block formats quantize each row in blocks along the input dimension:
    Q8_0  32 weights: fp16 scale d + 32 int8            w = d * q                      8.5 bits/weight
    Q4_0  32 weights: fp16 scale d + 32 4-bit codes      w = d * (q - 8)                4.5 bits/weight
    Q4_K  256-weight super-block: fp16 d and dmin, eight 32-weight sub-blocks each with a 6-bit scale and a
          6-bit min, 4-bit codes                         w = d*sc_j * q - dmin*m_j      4.5 bits/weight
gguf-py quantizes Q8_0 and Q4_0 itself but (0.19) only *de*quantizes Q4_K, so `q4_k_quantize_blocks` below
writes the Q4_K bytes (a simple min/max fit, not llama.cpp's iterative search), and reading the file back with
gguf's own dequantizer checks the layout. Like llama-quantize, a tensor whose rows are not a multiple of 256
(a hidden size of 576 or 896, say) cannot be Q4_K and falls back to Q5_0: `gguf_tensor_types` shows the mix.

Tensor names follow llama.cpp (blk.N.attn_q.weight ...). llama.cpp's converter permutes the rows of Llama's
q/k projections (its RoPE pairs dimensions differently); `write_gguf` applies the same permutation and
`read_gguf_state_dict` undoes it, so reading the course's source GGUF gives back the model's own weights.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

HF_TO_GGUF = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
              "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down"}
GGUF_TO_HF = {v: k for k, v in HF_TO_GGUF.items()}
FILE_TYPES = {"Q8_0": 7, "Q4_0": 2, "Q4_K": 15}       # llama.cpp's general.file_type (LlamaFileType) values
K_QUANTS = {"Q4_K": "Q5_0"}     # k-quant -> llama.cpp's fallback for rows that are not a multiple of 256


def require_gguf():
    try:
        import gguf
        return gguf
    except ImportError:
        raise ImportError("The `gguf` package is needed to read/write GGUF files: pip install gguf") from None


def hf_to_gguf_name(name: str) -> str:
    if name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if name == "model.norm.weight":
        return "output_norm.weight"
    if name == "lm_head.weight":
        return "output.weight"
    parts = name.split(".")                      # model.layers.{i}.{module...}.{weight|bias}
    if parts[:2] != ["model", "layers"]:
        raise KeyError(f"no GGUF name for {name}")
    module = ".".join(parts[3:-1])
    return f"blk.{parts[2]}.{HF_TO_GGUF[module]}.{parts[-1]}"


def gguf_to_hf_name(name: str) -> str:
    fixed = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
             "output.weight": "lm_head.weight"}
    if name in fixed:
        return fixed[name]
    _, i, module, kind = name.split(".")
    return f"model.layers.{i}.{GGUF_TO_HF[module]}.{kind}"


def _permute(w: np.ndarray, n_head: int, inverse: bool = False) -> np.ndarray:
    """llama.cpp's row order for Llama q/k (and its inverse)."""
    if inverse:
        return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _heads_for(name: str, config) -> int | None:
    if getattr(config, "model_type", "") not in ("llama", "mistral"):
        return None                              # qwen2 etc.: no permutation in llama.cpp's converter
    if ".self_attn.q_proj.weight" in name:
        return config.num_attention_heads
    if ".self_attn.k_proj.weight" in name:
        return config.num_key_value_heads
    return None


# --------------------------------------------------------------------------------------- Q4_K by hand
def q4_k_quantize_blocks(x: np.ndarray) -> np.ndarray:
    """x (n_blocks, 256) float -> (n_blocks, 144) uint8 in ggml's block_q4_K layout."""
    n = x.shape[0]
    sub = x.reshape(n, 8, 32).astype(np.float32)
    mn = np.minimum(sub.min(-1), 0.0)                                    # (n, 8), <= 0
    scale = (sub.max(-1) - mn) / 15.0
    d = (scale.max(-1, keepdims=True) / 63.0).astype(np.float16)
    dmin = ((-mn).max(-1, keepdims=True) / 63.0).astype(np.float16)
    df, dminf = d.astype(np.float32), dmin.astype(np.float32)
    sc = np.clip(np.round(np.divide(scale, df, out=np.zeros_like(scale), where=df > 0)), 0, 63).astype(np.uint8)
    m = np.clip(np.round(np.divide(-mn, dminf, out=np.zeros_like(mn), where=dminf > 0)), 0, 63).astype(np.uint8)
    step = (df * sc)[..., None]
    q = np.divide(sub + (dminf * m)[..., None], step, out=np.zeros_like(sub), where=step > 0)
    q = np.clip(np.round(q), 0, 15).astype(np.uint8)                    # (n, 8, 32)
    qs = (q[:, 0::2] | (q[:, 1::2] << 4)).reshape(n, 128)               # sub-blocks 2c (low) / 2c+1 (high)
    scales = np.zeros((n, 12), dtype=np.uint8)
    scales[:, 0:4] = sc[:, 0:4] | ((sc[:, 4:8] >> 4) << 6)
    scales[:, 4:8] = m[:, 0:4] | ((m[:, 4:8] >> 4) << 6)
    scales[:, 8:12] = (sc[:, 4:8] & 0x0F) | ((m[:, 4:8] & 0x0F) << 4)
    return np.concatenate([d.view(np.uint8), dmin.view(np.uint8), scales, qs], axis=1)


def quantize_array(w: np.ndarray, qtype: str) -> np.ndarray:
    gguf = require_gguf()
    t = gguf.GGMLQuantizationType[qtype]
    block = gguf.GGML_QUANT_SIZES[t][0]
    if w.shape[-1] % block:
        raise ValueError(f"{qtype} needs rows that are a multiple of {block}; this tensor has {w.shape[-1]}")
    if qtype == "Q4_K":
        rows = w.reshape(-1, block).astype(np.float32)
        return q4_k_quantize_blocks(rows).reshape(w.shape[0], -1)
    return gguf.quants.quantize(w.astype(np.float32), t)


# ------------------------------------------------------------------------------------------ write / read
def write_gguf(model, path: str | Path, qtype: str, *, source_gguf: str | Path | None = None,
               embed_qtype: str = "Q8_0") -> Path:
    """Write `model` (transformers Llama/Qwen2 family) as a GGUF file: decoder Linears in `qtype`, the token
    embedding in `embed_qtype`, norms (and biases) F32. Metadata (hyper-parameters, tokenizer, chat template)
    is copied from `source_gguf` when given, which makes the file loadable by llama.cpp; without it the file
    holds the tensors and the basic hyper-parameters only."""
    gguf = require_gguf()
    if qtype not in FILE_TYPES:
        raise ValueError(f"qtype {qtype!r}: this writer supports {sorted(FILE_TYPES)}")
    cfg = model.config
    arch = "llama" if cfg.model_type in ("llama", "mistral") else cfg.model_type
    path = Path(path)
    writer = gguf.GGUFWriter(str(path), arch)
    if source_gguf:
        reader = gguf.GGUFReader(str(source_gguf))
        for name, field in reader.fields.items():
            if name.startswith("GGUF.") or name in ("general.architecture", "general.file_type"):
                continue
            vtype = field.types[0]
            sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(name, field.contents(), vtype, sub_type=sub)
    else:
        writer.add_block_count(cfg.num_hidden_layers)
        writer.add_embedding_length(cfg.hidden_size)
        writer.add_feed_forward_length(cfg.intermediate_size)
        writer.add_head_count(cfg.num_attention_heads)
        writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_file_type(FILE_TYPES[qtype])
    tied = getattr(cfg, "tie_word_embeddings", False)
    for name, p in model.state_dict().items():
        if name == "lm_head.weight" and tied:
            continue
        w = p.detach().float().cpu().numpy()
        heads = _heads_for(name, cfg)
        if heads:
            w = _permute(w, heads)
        if w.ndim == 1:
            writer.add_tensor(hf_to_gguf_name(name), w.astype(np.float32))
        else:
            t = embed_qtype if name in ("model.embed_tokens.weight", "lm_head.weight") else qtype
            if t in K_QUANTS and w.shape[-1] % 256:
                t = K_QUANTS[t]                  # llama.cpp's rule: rows not a multiple of 256 fall back
            writer.add_tensor(hf_to_gguf_name(name), quantize_array(w, t), raw_dtype=gguf.GGMLQuantizationType[t])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def read_gguf_state_dict(path: str | Path, config) -> dict[str, torch.Tensor]:
    """Dequantize every tensor of a GGUF file into a transformers state dict (names and q/k order undone)."""
    gguf = require_gguf()
    reader = gguf.GGUFReader(str(path))
    out = {}
    for t in reader.tensors:
        name = gguf_to_hf_name(t.name)
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        heads = _heads_for(name, config)
        if heads:
            w = _permute(w, heads, inverse=True)
        out[name] = torch.from_numpy(np.ascontiguousarray(w))
    if getattr(config, "tie_word_embeddings", False) and "lm_head.weight" not in out:
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
    return out


def gguf_tensor_types(path: str | Path) -> dict[str, int]:
    """How many tensors of each GGML type a file holds (to check what was really written)."""
    gguf = require_gguf()
    counts: dict[str, int] = {}
    for t in gguf.GGUFReader(str(path)).tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    return counts
