"""`transformers serve`: Hugging Face's own OpenAI-compatible server (FastAPI + uvicorn), like VLLMServer.

The server is pinned to one model (`transformers serve <model>`, which it preloads); a request that names another
model gets HTTP 400. Two generation paths:
  * default: one `model.generate` per request, one request after another on a single inference thread
    (transformers/cli/serving/utils.py: GenerateManager), each with its own contiguous KV cache;
  * `--continuous-batching`: one paged-attention batch shared by all requests (transformers' ContinuousBatching
    manager), scheduled every step, as in vLLM.

What differs from vLLM for a benchmark client (transformers 5.17; read from transformers/cli/serving):
  * unknown request fields are refused (HTTP 422), so vLLM's `ignore_eos` cannot be sent; `benchmark_kwargs`
    sends a `generation_config` with min_new_tokens = max_new_tokens instead: exactly N tokens, EOS or not;
  * `response_format` (structured output) and `stream_options` are accepted but ignored (a warning in the log);
  * there is no /metrics route; /v1/models lists the hub cache only (we point it at an empty one).
"""
from __future__ import annotations

import json
import os
import sys

from .process import ServerProcess, free_port, log_dir

INSTALL = "pip install 'transformers[serving]'  (FastAPI, uvicorn, openai)"


def transformers_version() -> str | None:
    from importlib import metadata
    try:
        return metadata.version("transformers")
    except metadata.PackageNotFoundError:
        return None


def serve_available() -> str | None:
    """None if `transformers serve` can start here, else why not (with the install command)."""
    if transformers_version() is None:
        return f"transformers is not installed: {INSTALL}"
    from transformers.utils.import_utils import is_serve_available
    return None if is_serve_available() else f"transformers serve needs its extras: {INSTALL}"


def serve_command(model: str, port: int, *, host: str = "127.0.0.1", continuous_batching: bool = False,
                  device: str = "auto", dtype: str = "auto", **cb) -> list[str]:
    """`transformers serve MODEL --host --port ...` run through the CLI's typer app (the console script would also
    check PyPI for a newer transformers at every start). cb: cb_num_blocks=, cb_block_size=, cb_max_batch_tokens=."""
    cmd = [sys.executable, "-c", "from transformers.cli.transformers import app; app()", "serve", str(model),
           "--host", host, "--port", str(port), "--device", device, "--dtype", dtype, "--log-level", "info"]
    cmd.append("--continuous-batching" if continuous_batching else "--no-continuous-batching")
    for k, v in cb.items():
        if v is not None:
            cmd += ["--" + k.replace("_", "-"), str(v)]
    return cmd


def benchmark_kwargs(output_len: int) -> dict:
    """run_benchmark(...) arguments that make this server produce exactly `output_len` greedy tokens per request."""
    gen = {"max_new_tokens": output_len, "min_new_tokens": output_len, "do_sample": False}
    return {"ignore_eos": False, "extra_body": {"generation_config": json.dumps(gen)}}


class TransformersServer(ServerProcess):
    """`transformers serve` on 127.0.0.1 and a free port. Requests must name `srv.model_name` (the model path).

    Ready means /health answers and a one-token completion for our model succeeds: that also proves the server
    on the port is ours (pinned to our model) and includes the model load in the start-up time."""

    def __init__(self, model, *, port: int | None = None, continuous_batching: bool = False, device: str = "auto",
                 dtype: str = "auto", threads: int | None = None, startup_timeout_s: float = 600.0, log_path=None,
                 **cb):
        port = port or free_port()
        self.model = self.model_name = str(model)
        self.continuous_batching = continuous_batching
        empty_hub = log_dir() / "empty-hf-hub"       # /v1/models scans the hub cache and fails if it is missing
        empty_hub.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(empty_hub.resolve()),
                   TOKENIZERS_PARALLELISM="false")
        if threads:                                  # torch's CPU threads in the server (OpenMP)
            env["OMP_NUM_THREADS"] = str(threads)
        name = "transformers-cb" if continuous_batching else "transformers"
        super().__init__(serve_command(model, port, continuous_batching=continuous_batching, device=device,
                                       dtype=dtype, **cb), port, env=env, startup_timeout_s=startup_timeout_s,
                         name=name, log_path=log_path)

    def is_ours(self) -> str | None:
        import httpx
        try:
            r = httpx.post(self.url("/v1/completions"), trust_env=False, timeout=300,
                           json={"model": self.model_name, "prompt": "Hello", "max_tokens": 1, "temperature": 0})
        except httpx.HTTPError as e:
            return f"a one-token completion failed ({type(e).__name__}: {e})"
        if r.status_code != 200:
            return f"a one-token completion for {self.model_name!r} answered HTTP {r.status_code}: {r.text[:200]}"
        served = str(r.json().get("model", ""))
        return None if served.split("@")[0] == self.model_name else f"it serves {served!r}, not {self.model_name!r}"
