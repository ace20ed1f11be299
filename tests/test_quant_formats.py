"""FP8 E4M3 and NF4 grids, GGUF files written and read back (Q8_0, Q4_0, Q4_K), and the GPTQ checkpoint."""
import json

import numpy as np
import pytest
import torch

from utils.quant.export import read_gptq_checkpoint, save_gptq_checkpoint
from utils.quant.fp8 import E4M3_MAX, NF4_LEVELS, fp8_fake_quant, nf4_fake_quant, to_fp8
from utils.quant.gptq import gptq_quantize_model
from utils.quant.rtn import QuantSpec

from .test_quant_gptq_awq import tiny_llama


def test_fp8_relative_error_is_at_most_half_an_ulp():
    torch.manual_seed(0)
    x = torch.randn(64, 256) * 3
    q, scale = to_fp8(x)
    assert q.dtype == torch.float8_e4m3fn and float(x.abs().max() / scale) == pytest.approx(E4M3_MAX)
    xs = x / scale
    normal = xs.abs() >= 2.0**-6                            # E4M3 normal range: 3 mantissa bits -> 2^-4 rel.
    rel = ((q.float() - xs).abs() / xs.abs())[normal]
    assert rel.max() <= 2.0**-4 + 1e-6


def test_fp8_per_channel_matters_only_beyond_fp8s_dynamic_range():
    # a floating grid has the same RELATIVE precision over ~2^15 of range: rows 1000x apart quantize alike ...
    w = torch.randn(32, 128) * torch.logspace(-3, 0, 32).unsqueeze(1)
    e = lambda pc: float(((fp8_fake_quant(w, per_channel=pc) - w) / w.abs().amax(1, keepdim=True)).pow(2).mean())
    assert e(False) < 2 * e(True)
    # ... but rows 10^7 apart push the small ones into subnormals / zero under one per-tensor scale
    w = torch.randn(32, 128) * torch.logspace(-7, 0, 32).unsqueeze(1)
    e = lambda pc: float(((fp8_fake_quant(w, per_channel=pc) - w) / w.abs().amax(1, keepdim=True)).pow(2).mean())
    assert e(True) < e(False) / 4


def test_nf4_uses_its_16_levels_with_blockwise_absmax():
    w = torch.randn(8, 128)
    q = nf4_fake_quant(w, blocksize=64)
    blocks, qb = w.reshape(-1, 64), q.reshape(-1, 64)
    absmax = blocks.abs().amax(1, keepdim=True)
    levels = qb / absmax
    assert torch.isclose(levels.unsqueeze(-1), NF4_LEVELS, atol=1e-5).any(-1).all()
    gaps = (NF4_LEVELS[1:] - NF4_LEVELS[:-1]).max()
    assert ((qb - blocks).abs() <= absmax * gaps / 2 + 1e-6).all()


def test_q4_k_blocks_decode_with_gguf_own_dequantizer():
    gguf = pytest.importorskip("gguf")
    from utils.quant.gguf_io import q4_k_quantize_blocks
    x = np.random.default_rng(0).standard_normal((16, 256)).astype(np.float32)
    b = q4_k_quantize_blocks(x)
    assert b.shape == (16, 144)                               # ggml's block_q4_K size
    y = gguf.quants.dequantize(b, gguf.GGMLQuantizationType.Q4_K)
    sub = x.reshape(16, 8, 32)
    step = (sub.max(-1) - np.minimum(sub.min(-1), 0)) / 15
    err = np.abs(y - x).reshape(16, 8, 32).max(-1)
    assert (err <= 1.3 * step).all()                          # half a step + 6-bit scale/min rounding


@pytest.mark.parametrize("qtype,tol", [("Q8_0", 0.01), ("Q4_0", 0.15), ("Q4_K", 0.15)])
def test_gguf_file_round_trip(tmp_path, qtype, tol):
    pytest.importorskip("gguf")
    from utils.quant.gguf_io import gguf_tensor_types, read_gguf_state_dict, write_gguf
    model = tiny_llama(hidden=256, inter=512)
    path = write_gguf(model, tmp_path / f"m-{qtype}.gguf", qtype)
    types = gguf_tensor_types(path)
    assert types.get(qtype, 0) >= 14 and types["F32"] == 5   # 2 x 7 Linears (+ embed/lm_head in Q8_0)
    back = read_gguf_state_dict(path, model.config)
    for name, p in model.state_dict().items():
        rel = float((back[name] - p).abs().max() / p.abs().max())
        assert rel < tol, f"{name}: {rel:.3f}"                 # a wrong q/k permutation would give ~1.0


def test_gguf_k_quant_falls_back_when_rows_are_not_multiples_of_256(tmp_path):
    pytest.importorskip("gguf")
    from utils.quant.gguf_io import gguf_tensor_types, write_gguf
    path = write_gguf(tiny_llama(hidden=192, inter=512, heads=3, kv=1), tmp_path / "m.gguf", "Q4_K")
    assert gguf_tensor_types(path) == {"Q8_0": 2, "Q5_0": 12, "Q4_K": 2, "F32": 5}   # only ffn_down: 512 wide
    with pytest.raises(ValueError, match="supports"):
        write_gguf(tiny_llama(), tmp_path / "x.gguf", "Q3_K")


def test_gptq_checkpoint_round_trip(tmp_path):
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models
    model = tiny_llama()
    results = gptq_quantize_model(model, torch.randint(0, 128, (2, 32)), QuantSpec(4, 64, True))
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, "[UNK]")))
    out = save_gptq_checkpoint(model, tok, results, QuantSpec(4, 64, True), tmp_path / "ckpt")
    cfg = json.loads((out / "config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == "gptq" and cfg["bits"] == 4 and cfg["group_size"] == 64 and not cfg["desc_act"]
    weights = read_gptq_checkpoint(out)
    assert len(weights) == 14
    for name, w in weights.items():
        assert torch.allclose(w, model.get_submodule(name).weight.data.float(), atol=1e-3 * w.abs().max())
    with pytest.raises(ValueError, match="symmetric 4-bit"):
        save_gptq_checkpoint(model, tok, results, QuantSpec(4, 64, False), tmp_path / "bad")
