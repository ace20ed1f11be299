"""utils/quant/library_reference.py: the message when the library is missing, the compressed-tensors reader (on
tensors whose packed words were produced by compressed-tensors 0.19.0's own `pack_to_int32`), and, where the
library's venv exists (`bash .ci/install_quant_lib.sh`), a real library GPTQ of a tiny random Llama."""
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from utils.quant import library_reference as lr
from utils.quant.rtn import QuantSpec

# codes q[r, c] = (5r + 3c) % 16 - 8 (8 x 32) and zero points zp[r, g] = (3r + 7g) % 16 - 8 (8 x 2), packed by
# compressed_tensors.compressors.pack_quantized.helpers.pack_to_int32 (zero points with packed_dim=0)
PACKED = [[1392285232, -629924168, 1392285232, -629924168], [-1488852091, 801727245, -1488852091, 801727245],
          [-57265958, 1948170322, -57265958, 1948170322], [1105954095, -916255321, 1105954095, -916255321],
          [-1775183244, 515396348, -1775183244, 515396348], [-343593015, 1661839169, -343593015, 1661839169],
          [819622942, -1202520938, 819622942, -1202520938], [-2060465821, 229065195, -2060465821, 229065195]]
PACKED_ZP = [[1392285232, -916255321]]
R, C, G = torch.arange(8).view(8, 1), torch.arange(32).view(1, 32), torch.arange(2).view(1, 2)
CODES, ZP = (R * 5 + C * 3) % 16 - 8, (R * 3 + G * 7) % 16 - 8
SCALE = (0.01 * (R + 1) + 0.001 * G).float()


def write_checkpoint(folder, sym: bool, fmt: str = "pack-quantized", extra=None):
    state = {"model.layers.0.mlp.up_proj.weight_packed": torch.tensor(PACKED, dtype=torch.int32),
             "model.layers.0.mlp.up_proj.weight_scale": SCALE,
             "model.layers.0.mlp.up_proj.weight_shape": torch.tensor([8, 32]),
             "model.norm.weight": torch.ones(4)}
    if not sym:
        state["model.layers.0.mlp.up_proj.weight_zero_point"] = torch.tensor(PACKED_ZP, dtype=torch.int32)
    state.update(extra or {})
    save_file(state, str(folder / "model.safetensors"))
    weights = {"num_bits": 4, "symmetric": sym, "strategy": "group", "group_size": 16}
    (folder / "config.json").write_text(json.dumps({"quantization_config": {
        "format": fmt, "quant_method": "compressed-tensors", "config_groups": {"group_0": {"weights": weights}}}}))
    return folder


def test_unpack_matches_compressed_tensors_packing():
    assert torch.equal(lr.unpack_int32(torch.tensor(PACKED, dtype=torch.int32), 4, 32), CODES.to(torch.int16))
    assert torch.equal(lr.unpack_int32(torch.tensor(PACKED_ZP, dtype=torch.int32).T.contiguous(), 4, 8).T,
                       ZP.to(torch.int16))
    with pytest.raises(ValueError, match="straddle"):
        lr.unpack_int32(torch.zeros(1, 3, dtype=torch.int32), 3, 32)


@pytest.mark.parametrize("sym", [True, False])
def test_read_compressed_tensors_dequantizes(tmp_path, sym):
    w = lr.read_compressed_tensors(write_checkpoint(tmp_path, sym))
    assert list(w) == ["model.layers.0.mlp.up_proj"]          # only quantized Linears, not norms
    zero = 0 if sym else ZP.float().repeat_interleave(16, 1)
    torch.testing.assert_close(w["model.layers.0.mlp.up_proj"], (CODES.float() - zero) * SCALE.repeat_interleave(16, 1))


def test_read_compressed_tensors_refuses_what_it_cannot_read(tmp_path):
    with pytest.raises(ValueError, match="pack-quantized"):
        lr.read_compressed_tensors(write_checkpoint(tmp_path, True, fmt="float-quantized"))
    g_idx = {"model.layers.0.mlp.up_proj.weight_g_idx": torch.zeros(32, dtype=torch.int32)}
    with pytest.raises(ValueError, match="g_idx"):
        lr.read_compressed_tensors(write_checkpoint(tmp_path, True, extra=g_idx))


def test_missing_library_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("COURSE_QUANT_LIB_PYTHON", str(tmp_path / "no-venv" / "bin" / "python"))
    with pytest.raises(lr.LibraryUnavailable, match="bash .ci/install_quant_lib.sh") as e:
        lr.library_versions()
    assert "no python at" in str(e.value)


def test_python_without_the_library_names_the_install_command(monkeypatch):
    if subprocess.run([sys.executable, "-c", "import llmcompressor"], capture_output=True).returncode == 0:
        pytest.skip("llmcompressor is importable in the course's own environment")
    monkeypatch.setenv("COURSE_QUANT_LIB_PYTHON", sys.executable)
    with pytest.raises(lr.LibraryUnavailable, match="cannot import llmcompressor.*install_quant_lib.sh"):
        lr.library_versions()


def _library_missing() -> str | None:
    try:
        lr.library_versions()
    except lr.LibraryUnavailable as e:
        return str(e)
    return None


def tiny_llama(folder, tokenizer):
    """A 2-block random Llama saved to `folder` (with the course's tokenizer: the library wants one there)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=256)
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


@pytest.mark.slow
def test_library_gptq_on_a_tiny_model(tmp_path, course_tokenizer):
    """The real library (its venv) on a 2-block random Llama: the reader agrees with compressed-tensors' own
    decompression bit for bit, the grid is the library's (INT4 g64 sym), and the course model is restored."""
    if why := _library_missing():
        pytest.skip(why)
    model = tiny_llama(tmp_path / "model", course_tokenizer)
    calib, held = torch.randint(0, 512, (2, 64)), torch.randint(0, 512, (2, 64))
    spec = QuantSpec(4, 64, True)
    run = lr.library_quantize("gptq", tmp_path / "model", calib, spec, tmp_path / "ckpt")
    assert run["settings"]["group_size"] == 64 and run["settings"]["actorder"] is None
    ours = lr.read_compressed_tensors(tmp_path / "ckpt")
    assert len(ours) == 2 * 7
    check = ("import json, sys, torch; from safetensors.torch import load_file\n"
             "from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor as P\n"
             "from compressed_tensors.quantization import QuantizationScheme\n"
             "d = sys.argv[1]; sd = load_file(d + '/model.safetensors')\n"
             "g = json.load(open(d + '/config.json'))['quantization_config']['config_groups']['group_0']\n"
             "s = QuantizationScheme(**{k: v for k, v in g.items() if k != 'format'})\n"
             "names = {k.rsplit('.', 1)[0] for k in sd if k.endswith('.weight_packed')}\n"
             "w = {n: P.decompress({k.rsplit('.', 1)[1]: v for k, v in sd.items() if k.rsplit('.', 1)[0] == n}, s)"
             "['weight'] for n in names}\n"
             "torch.save(w, d + '/lib.pt')\n")
    subprocess.run([str(lr.library_python()), "-c", check, str(tmp_path / "ckpt")], check=True, capture_output=True)
    theirs = torch.load(tmp_path / "ckpt" / "lib.pt")
    assert set(theirs) == set(ours)
    scales = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    for n, w in ours.items():
        assert torch.equal(w, theirs[n].float()), n
        # the library's grid: scales from a min-max observer on the weights BEFORE GPTQ, absmax / 7.5, codes -8..7
        orig = model.get_submodule(n).weight.detach()
        scale = scales[f"{n}.weight_scale"]
        torch.testing.assert_close(scale, orig.reshape(orig.shape[0], -1, 64).abs().amax(-1) / 7.5)
        codes = w / scale.repeat_interleave(64, 1)
        assert torch.allclose(codes, codes.round(), atol=1e-4), n
        assert codes.round().min() >= -8 and codes.round().max() <= 7, n
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = lr.library_perplexity("gptq", model, tmp_path / "model", calib, held, spec)
    assert 1 < res["ppl"] < 10 * 512 and res["quantize_s"] > 0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "the model was not restored"


@pytest.mark.slow
def test_library_awq_on_a_tiny_model(tmp_path, course_tokenizer):
    """The library's AWQ folds scales into the norms: those come back with the Linears, and everything is restored."""
    if why := _library_missing():
        pytest.skip(why)
    model = tiny_llama(tmp_path / "model", course_tokenizer)
    calib, held = torch.randint(0, 512, (2, 64)), torch.randint(0, 512, (2, 64))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = lr.library_perplexity("awq", model, tmp_path / "model", calib, held, QuantSpec(4, 64, True), n_grid=4)
    assert res["settings"]["duo_scaling"] is False and res["settings"]["n_grid"] == 4
    assert 1 < res["ppl"] < 10 * 512
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "the model was not restored"
