"""SGLang's OpenAI-compatible server (`python -m sglang.launch_server`), started and stopped like VLLMServer.

SGLang pins its own torch, transformers and kernel versions (0.5.16: torch 2.11.0, transformers 5.12.1,
sglang-kernel 0.4.5), which clash with vLLM's (with transformers 5.17, importing sglang 0.5.16 fails: "'qwen3_asr' is
already used by a Transformers config"), so it never shares this Python environment: the server runs as its own
process from either
  * COURSE_SGLANG_PATH: a folder made by `pip install --no-deps --target DIR ...`, put first on the server's
    PYTHONPATH only (the interpreter stays this one, so it reuses the installed torch), or
  * COURSE_SGLANG_PYTHON: the python of a separate virtual environment that has sglang.
Neither set: the current interpreter, if it has sglang. Otherwise `sglang_available()` says how to install it.

What matters for a benchmark client (read from sglang 0.5.16, srt/entrypoints): /health answers 503 until the
warm-up request has run, then 200; /v1/models lists `--served-model-name`; completions accept vLLM's `ignore_eos`
(and `min_tokens`), so the client's defaults give exactly N tokens; /metrics (`sglang:*` gauges) only with
--enable-metrics; /server_info reports the version and the KV pool size.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .process import ServerProcess, free_port

PATH_ENV, PYTHON_ENV = "COURSE_SGLANG_PATH", "COURSE_SGLANG_PYTHON"
PINNED = "0.5.16"        # pins torch 2.11 (0.5.11-0.5.17 do; 0.5.18 and later need torch >= 2.13)
INSTALL = (f"python -m venv ~/sglang-venv && ~/sglang-venv/bin/pip install sglang=={PINNED} && "
           f"export {PYTHON_ENV}=~/sglang-venv/bin/python  (NVIDIA GPU; or into a folder: pip install "
           f"--target ~/sglang_env sglang=={PINNED} && export {PATH_ENV}=~/sglang_env)")


def sglang_runtime(environ=None) -> tuple[str, str | None]:
    """(interpreter, extra PYTHONPATH or None) that the server runs with, from the environment variables."""
    environ = os.environ if environ is None else environ
    return environ.get(PYTHON_ENV) or sys.executable, environ.get(PATH_ENV) or None


def sglang_version(environ=None) -> str | None:
    """The installed sglang version, read from package metadata (sglang itself is not imported: it needs a GPU)."""
    python, path = sglang_runtime(environ)
    if path:
        metas = sorted(Path(path).glob("sglang-*.dist-info/METADATA"))
        for line in (metas[-1].read_text(errors="replace").splitlines() if metas else []):
            if line.startswith("Version:"):
                return line.split(":", 1)[1].strip()
        return None
    if python == sys.executable:
        from importlib import metadata
        try:
            return metadata.version("sglang")
        except metadata.PackageNotFoundError:
            return None
    try:
        out = subprocess.run([python, "-c", "from importlib import metadata; print(metadata.version('sglang'))"],
                             capture_output=True, text=True, timeout=60)
    except OSError:
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def sglang_available(environ=None) -> str | None:
    """None if an SGLang server can be started, else what is missing and how to install it."""
    environ = os.environ if environ is None else environ
    python, path = sglang_runtime(environ)
    if path and not Path(path).is_dir():
        return f"{PATH_ENV}={path} is not a folder. Install SGLang there: {INSTALL}"
    if environ.get(PYTHON_ENV) and not os.access(python, os.X_OK):
        return f"{PYTHON_ENV}={python} is not an executable interpreter. {INSTALL}"
    if sglang_version(environ) is None:
        where = f"in {path}" if path else f"for {python}"
        return f"SGLang is not installed {where}. Install it in its own environment: {INSTALL}"
    return None


def sglang_env(environ=None) -> dict:
    """The server's environment: COURSE_SGLANG_PATH first on PYTHONPATH (before any other overlay), offline hub."""
    env = dict(os.environ if environ is None else environ)
    _, path = sglang_runtime(env)
    if path:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (path, env.get("PYTHONPATH")) if p)
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def sglang_command(model, port: int, *, host: str = "127.0.0.1", served_model_name: str | None = None,
                   mem_fraction_static: float | None = None, load_format: str | None = None,
                   enable_metrics: bool = True, python: str | None = None, **server_args) -> list[str]:
    """`python -m sglang.launch_server --model-path M --host H --port P ...` (flags as in sglang 0.5.16's
    ServerArgs). server_args use python names (context_length=2048 -> --context-length 2048; True -> a bare flag;
    False/None -> omitted). load_format="dummy": random weights of the model's shape."""
    if load_format not in (None, "auto", "dummy", "safetensors", "pt"):
        raise ValueError(f"load_format={load_format!r}: use None (the checkpoint's weights) or 'dummy' (random)")
    cmd = [python or sglang_runtime()[0], "-m", "sglang.launch_server", "--model-path", str(model),
           "--host", host, "--port", str(port)]
    for k, v in dict(served_model_name=served_model_name, mem_fraction_static=mem_fraction_static,
                     load_format=load_format, enable_metrics=enable_metrics, **server_args).items():
        if v is None or v is False:
            continue
        cmd += ["--" + k.replace("_", "-")] + ([] if v is True else [str(v)])
    return cmd


class SGLangServer(ServerProcess):
    """SGLang's server on 127.0.0.1 and a free port; healthy = /health 200 and /v1/models lists our model."""

    def __init__(self, model, *, served_model_name: str = "course-model", port: int | None = None,
                 mem_fraction_static: float | None = None, load_format: str | None = None, python: str | None = None,
                 startup_timeout_s: float = 900.0, log_path=None, **server_args):
        environ = dict(os.environ, **({PYTHON_ENV: python} if python else {}))
        reason = sglang_available(environ)
        if reason:
            raise ModuleNotFoundError(reason)
        port = port or free_port()
        self.model, self.model_name, self.load_format = str(model), served_model_name, load_format
        cmd = sglang_command(model, port, served_model_name=served_model_name, mem_fraction_static=mem_fraction_static,
                             load_format=load_format, python=sglang_runtime(environ)[0], **server_args)
        super().__init__(cmd, port, env=sglang_env(environ), startup_timeout_s=startup_timeout_s, name="sglang",
                         log_path=log_path, served_model=served_model_name)

    def server_info(self) -> dict:
        """/server_info: the server's arguments, version and scheduler facts (max_total_num_tokens = KV pool)."""
        import httpx
        return httpx.get(self.url("/server_info"), timeout=10, trust_env=False).json()
