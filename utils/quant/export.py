"""Write the course's own quantized model as a GPTQ checkpoint (the format vLLM, transformers and most engines
load as "W4A16"), and read it back.

Per quantized Linear `<p>` (AutoGPTQ's "v1" layout, what vLLM's gptq / gptq_marlin / CPU kernels read):
    <p>.qweight  int32 (in/8, out)     8 codes per int32 along the INPUT dim, code k of a word in bits 4k..4k+3;
                                       symmetric codes are stored +8 (0..15, vLLM's uint4b8 type)
    <p>.qzeros   int32 (groups, out/8) zero points packed along the OUTPUT dim, stored minus 1 (v1 quirk): 7
    <p>.scales   fp16  (groups, out)
    <p>.g_idx    int32 (in,)           group of each input column (i // group_size without act-order)
Everything else (embeddings, norms, LM head) is saved as is. config.json gets a `quantization_config`.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from .rtn import QuantSpec


def pack_rows_int32(u: torch.Tensor) -> torch.Tensor:
    """(n, m) values 0..15 -> (n/8, m) int32, 8 consecutive rows per word (row 8i+k in bits 4k..4k+3)."""
    n, m = u.shape
    if n % 8:
        raise ValueError(f"cannot pack {n} rows into int32 words of 8 codes")
    u = u.to(torch.int64).reshape(n // 8, 8, m)
    shifts = (torch.arange(8, dtype=torch.int64) * 4).view(1, 8, 1)
    word = (u << shifts).sum(1)                       # 0 .. 2^32-1
    return torch.where(word >= 2**31, word - 2**32, word).to(torch.int32)


def unpack_rows_int32(p: torch.Tensor) -> torch.Tensor:
    shifts = (torch.arange(8, dtype=torch.int64) * 4).view(1, 8, 1)
    u = (p.to(torch.int64).unsqueeze(1) >> shifts) & 0xF
    return u.reshape(p.shape[0] * 8, p.shape[1])


def save_gptq_checkpoint(model, tokenizer, results: dict, spec: QuantSpec, out_dir: str | Path,
                         desc: str = "course GPTQ") -> Path:
    """results: {linear name: object with .q (int8 codes, out x in), .scale, .zero (out x groups), .g_idx}."""
    from safetensors.torch import save_file
    if spec.bits != 4 or not spec.sym:
        raise ValueError(f"this exporter writes symmetric 4-bit GPTQ (uint4b8); got {spec.label()}. "
                         "vLLM's GPTQ kernels also take 8-bit, but the course exports what it measures: 4-bit sym.")
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    state = {}
    for name, p in model.state_dict().items():
        mod = name.rsplit(".", 1)[0]
        if mod in results and name.endswith(".weight"):
            r = results[mod]
            state[f"{mod}.qweight"] = pack_rows_int32((r.q.to(torch.int16) + 8).T.contiguous())
            zeros = torch.full((r.scale.shape[1], r.scale.shape[0]), 7, dtype=torch.int16)   # zero 8, stored - 1
            state[f"{mod}.qzeros"] = pack_rows_int32(zeros.T.contiguous()).T.contiguous()
            state[f"{mod}.scales"] = r.scale.T.contiguous().to(torch.float16)
            state[f"{mod}.g_idx"] = r.g_idx.to(torch.int32)
        elif name == "lm_head.weight" and getattr(model.config, "tie_word_embeddings", False):
            continue
        else:
            state[name] = p.detach().to(torch.bfloat16).cpu().contiguous()
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = model.config.to_dict()
    act_order = any(not torch.equal(r.g_idx, torch.arange(r.q.shape[1], dtype=torch.int32) // spec.group_size)
                    for r in results.values())
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": spec.group_size, "sym": True,
                                  "desc_act": act_order, "checkpoint_format": "gptq", "damp_percent": 0.01,
                                  "true_sequential": False, "model_name_or_path": None, "quantizer": [desc]}
    cfg["torch_dtype"] = cfg["dtype"] = "bfloat16"
    (out / "config.json").write_text(json.dumps(cfg, indent=1))
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def read_gptq_checkpoint(folder: str | Path) -> dict[str, torch.Tensor]:
    """Dequantized weights of every GPTQ Linear in a checkpoint written by save_gptq_checkpoint: {module: W}."""
    from safetensors.torch import load_file
    state = load_file(str(Path(folder) / "model.safetensors"))
    weights = {}
    for key in [k for k in state if k.endswith(".qweight")]:
        mod = key[: -len(".qweight")]
        q = unpack_rows_int32(state[key]).T.float()                           # out x in, 0..15
        zeros = unpack_rows_int32(state[f"{mod}.qzeros"].T.contiguous()).T.float() + 1   # groups x out
        scales, g_idx = state[f"{mod}.scales"].float(), state[f"{mod}.g_idx"].long()
        weights[mod] = (q - zeros[g_idx].T) * scales[g_idx].T
    return weights
