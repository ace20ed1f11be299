"""llama.cpp's own OpenAI-compatible HTTP server on a GGUF file, started and stopped like VLLMServer.

Where it comes from (package registries only, no compiler needed for the first):
  * `xllamacpp` (prebuilt wheels; PyPI has the CPU build): its `Server` class runs llama.cpp's native C++ server
    (tools/server: continuous batching over `parallel` slots, prompt cache, /metrics, JSON-schema output) inside
    a Python process. `python -m utils.serving.llamacpp_server --model X.gguf --port P` is that process.
  * a `llama-server` binary built from llama.cpp's source (the CUDA route: `cmake -DGGML_CUDA=ON`, see
    `build_command`), found through LLAMA_SERVER (its path) or on PATH: the same C++ server as xllamacpp's.
  * `llama-cpp-python[server]` (an sdist that compiles llama.cpp; `CMAKE_ARGS=-DGGML_CUDA=on` for NVIDIA GPUs):
    `python -m llama_cpp.server`, a Python (FastAPI) server over the `Llama` class -- one request at a time.
llama.cpp reads GGUF files only; `check_gguf` refuses anything else with a message before a server starts.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from ..measure.provenance import usable_cpus
from .process import ServerProcess, free_port

BACKENDS = ("xllamacpp", "llama_server", "llama_cpp_python")
NATIVE = ("xllamacpp", "llama_server")      # llama.cpp's own C++ server: parallel slots, continuous batching
BINARY_ENV = "LLAMA_SERVER"
INSTALL = ("pip install xllamacpp  (prebuilt CPU wheel; or build llama.cpp's llama-server with CUDA and set "
           "LLAMA_SERVER=/path/to/llama-server; or: pip install 'llama-cpp-python[server]', which compiles)")


class ModelFormatError(ValueError):
    """The file given to an engine is not in a format it reads."""


def llama_server_binary() -> str | None:
    """A built `llama-server` (its resolved path): $LLAMA_SERVER if set, else `llama-server` on PATH; None if absent."""
    path = os.environ.get(BINARY_ENV)
    if path:                                 # a path (~ allowed) or a command name on PATH
        return shutil.which(os.path.expanduser(path))
    return shutil.which("llama-server")


def build_command(source_dir, build_dir, cuda_arch: str | None = "90", jobs: int | None = None,
                  extra_flags: tuple[str, ...] = ()) -> str:
    """Shell commands that build llama.cpp's server from its source tree, offline (no web UI download);
    cuda_arch=None builds for the CPU only. Then: export LLAMA_SERVER=<build_dir>/bin/llama-server."""
    flags = ["-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
             "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_OPENSSL=OFF", *extra_flags]
    if cuda_arch:
        flags += ["-DGGML_CUDA=ON", f"-DCMAKE_CUDA_ARCHITECTURES={cuda_arch}"]
    return (f"cmake -S {source_dir} -B {build_dir} {' '.join(flags)} && "
            f"cmake --build {build_dir} --target llama-server -j {jobs or os.cpu_count() or 1}")


def llamacpp_backends() -> list[str]:
    """The installed routes to llama.cpp's server, preferred first: 'xllamacpp' (llama.cpp's own C++ server in a
    wheel), 'llama_server' (a built llama-server binary), 'llama_cpp_python' (a Python server, one request at a time)."""
    import importlib.util
    found = {"xllamacpp": importlib.util.find_spec("xllamacpp") is not None,
             "llama_server": llama_server_binary() is not None,
             "llama_cpp_python": importlib.util.find_spec("llama_cpp") is not None}
    return [b for b in BACKENDS if found[b]]


def _binary_output(*args: str) -> str:
    try:
        out = subprocess.run([llama_server_binary() or "llama-server", *args], capture_output=True, text=True,
                             timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout + out.stderr


def llamacpp_backend(gpu: bool = False) -> str | None:
    """The route to use: the first installed one (gpu=True: the first whose build can offload to a GPU); None."""
    for backend in llamacpp_backends():
        if not gpu or llamacpp_gpu_offload(backend):
            return backend
    return None


def llamacpp_version(backend: str | None = None) -> str | None:
    from importlib import metadata
    backend = backend or llamacpp_backend()
    if backend == "llama_server":           # "version: 0 (<commit>)": the build's number and commit
        line = next((l for l in _binary_output("--version").splitlines() if l.startswith("version:")), "")
        return line.split(":", 1)[1].strip() or None if line else None
    try:
        return metadata.version({"xllamacpp": "xllamacpp", "llama_cpp_python": "llama-cpp-python"}[backend])
    except (KeyError, metadata.PackageNotFoundError):
        return None


def llamacpp_gpu_offload(backend: str | None = None) -> bool:
    """Can this llama.cpp build run layers on a GPU? (PyPI's xllamacpp wheel is CPU-only.)"""
    backend = backend or llamacpp_backend()
    if backend == "xllamacpp":
        import xllamacpp
        return any("GPU" in str(d.get("type")) for d in xllamacpp.get_device_info())
    if backend == "llama_server":           # `--list-devices` names CUDA0 ... for a CUDA build
        return any(l.strip().startswith(("CUDA", "ROCm", "Vulkan", "Metal")) for l in
                   _binary_output("--list-devices").splitlines())
    if backend == "llama_cpp_python":
        import llama_cpp
        return bool(llama_cpp.llama_supports_gpu_offload())
    return False


def check_gguf(path) -> Path:
    """`path` if it is a GGUF file (magic bytes b"GGUF"); else ModelFormatError saying what it is and what to do."""
    p = Path(path)
    if p.is_dir():
        kinds = sorted({f.suffix for f in p.iterdir() if f.is_file()})
        raise ModelFormatError(f"{p} is a folder ({', '.join(kinds) or 'empty'}), not a GGUF file: llama.cpp reads "
                               f"only .gguf files. Convert a transformers folder with llama.cpp's "
                               f"convert_hf_to_gguf.py, or pass the model's .gguf file.")
    if not p.is_file():
        raise ModelFormatError(f"{p} does not exist: pass the path of a .gguf file.")
    with open(p, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ModelFormatError(f"{p} is not a GGUF file (it starts with {magic!r}, not b'GGUF'): llama.cpp reads only "
                               f"GGUF. Convert the model to GGUF first.")
    return p


def llamacpp_command(gguf, port: int, *, host: str = "127.0.0.1", alias: str = "course-model", n_ctx: int = 2048,
                     parallel: int = 4, threads: int | None = None, n_gpu_layers: int = 0,
                     backend: str | None = None) -> list[str]:
    """The command line of one server. n_ctx is per request (slot); llama.cpp splits its context among slots."""
    backend = backend or llamacpp_backend()
    threads = threads or usable_cpus()
    if backend == "xllamacpp":
        return [sys.executable, "-m", "utils.serving.llamacpp_server", "--model", str(gguf), "--host", host,
                "--port", str(port), "--alias", alias, "--n-ctx", str(n_ctx), "--parallel", str(parallel),
                "--threads", str(threads), "--n-gpu-layers", str(n_gpu_layers)]
    if backend == "llama_server":           # the same settings as main() gives xllamacpp
        return [llama_server_binary() or "llama-server", "--model", str(gguf), "--host", host, "--port", str(port),
                "--alias", alias, "--ctx-size", str(n_ctx * parallel), "--parallel", str(parallel),
                "--threads", str(threads), "--threads-batch", str(threads), "--n-gpu-layers", str(n_gpu_layers),
                "--metrics", "--threads-http", str(2 * parallel + 8), "--no-webui"]
    if backend == "llama_cpp_python":
        return [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", host, "--port", str(port),
                "--model_alias", alias, "--n_ctx", str(n_ctx), "--n_threads", str(threads),
                "--n_gpu_layers", str(n_gpu_layers), "--interrupt_requests", "False"]   # queue, do not cancel
    raise ModuleNotFoundError(f"llama.cpp's server is not installed. Install it with: {INSTALL}")


class LlamaCppServer(ServerProcess):
    """llama.cpp's server on 127.0.0.1 and a free port; /v1/models must list `served_model_name`."""

    def __init__(self, gguf, *, port: int | None = None, served_model_name: str = "course-model",
                 n_ctx: int = 2048, parallel: int = 4, threads: int | None = None, n_gpu_layers: int = 0,
                 backend: str | None = None, startup_timeout_s: float = 300.0, log_path=None):
        self.gguf = check_gguf(gguf)
        self.backend = backend or llamacpp_backend()
        self.model_name = served_model_name
        port = port or free_port()
        cmd = llamacpp_command(self.gguf, port, alias=served_model_name, n_ctx=n_ctx, parallel=parallel,
                               threads=threads, n_gpu_layers=n_gpu_layers, backend=self.backend)
        cwd = str(Path(__file__).resolve().parents[2])          # the course folder: `-m utils...` resolves there
        health = "/health" if self.backend in NATIVE else "/v1/models"      # llama_cpp.server has no /health
        super().__init__(cmd, port, startup_timeout_s=startup_timeout_s, name="llamacpp", log_path=log_path,
                         cwd=cwd, served_model=served_model_name, health_path=health)


def bf16_gguf(src, dst) -> Path:
    """A BF16 copy of a quantized GGUF: every quantized tensor dequantized (gguf's own dequantize, as transformers
    does when it loads a GGUF) and rounded to bfloat16; float tensors and all metadata copied unchanged.

    The course's safetensors model is made the same way (dequantize -> bf16), so llama.cpp on this file runs the
    *same weight values* as vLLM and transformers: a matched-precision comparison. Written once (~270 MB for the
    default model), atomically."""
    import gguf
    import numpy as np
    src, dst = check_gguf(src), Path(dst)
    if dst.is_file():
        return dst
    reader = gguf.GGUFReader(str(src))
    tmp = dst.with_suffix(".tmp")
    dst.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(tmp), arch=reader.fields["general.architecture"].contents())
    keep = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.BF16)
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF."):
            continue                                   # written by the writer itself
        value = field.contents()
        if field.name == "general.file_type":
            value = int(gguf.LlamaFileType.MOSTLY_BF16)
        vtype = field.types[0]
        writer.add_key_value(field.name, value, vtype,
                             sub_type=field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None)
    for t in reader.tensors:
        if t.tensor_type in keep:
            writer.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
        else:
            dense = gguf.quants.dequantize(t.data, t.tensor_type)
            writer.add_tensor(t.name, gguf.quants.quantize(dense, gguf.GGMLQuantizationType.BF16),
                              raw_dtype=gguf.GGMLQuantizationType.BF16)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, dst)
    return dst


def main(argv=None) -> None:
    """Run llama.cpp's native server through xllamacpp until this process is stopped (SIGTERM)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag, typ in (("--model", str), ("--host", str), ("--port", int), ("--alias", str), ("--n-ctx", int),
                      ("--parallel", int), ("--threads", int), ("--n-gpu-layers", int)):
        ap.add_argument(flag, type=typ, required=flag in ("--model", "--port"))
    a = ap.parse_args(argv)
    import threading
    import xllamacpp as xlc
    p = xlc.CommonParams()
    p.model.path = str(check_gguf(a.model))
    if hasattr(p, "hostnames"):                               # a list since 2026.10; one `hostname` before
        p.hostnames = [a.host or "127.0.0.1"]
    else:
        p.hostname = a.host or "127.0.0.1"
    p.port = a.port
    p.model_alias = {a.alias or "course-model"}
    p.n_parallel = a.parallel or 4
    p.n_ctx = (a.n_ctx or 2048) * p.n_parallel               # the context is shared by the slots
    p.n_gpu_layers = a.n_gpu_layers or 0
    p.cpuparams.n_threads = p.cpuparams_batch.n_threads = a.threads or usable_cpus()
    p.endpoint_metrics = True                                 # Prometheus /metrics
    p.n_threads_http = 2 * p.n_parallel + 8                   # one HTTP thread per open connection (keep-alive)
    server = xlc.Server(p)                                    # loads the model, then serves in its own threads
    print(f"llama.cpp server (xllamacpp {llamacpp_version('xllamacpp')}) at {server.listening_address}", flush=True)
    threading.Event().wait()                                  # until SIGTERM/SIGKILL ends the process


if __name__ == "__main__":
    main()
