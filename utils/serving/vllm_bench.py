"""vLLM's own load generator, `vllm bench serve`, against a running server: the reference for the course client.

    res = run_bench_serve(srv.base_url, "course-model", tokenizer=MODEL, input_len=256, output_len=128,
                          concurrency=8, num_prompts=64)
    client_vs_bench(course_metrics, res)      # medians of TTFT / TPOT / ITL and throughput, side by side

It runs in its own process (the benchmark calls asyncio.run, which a notebook's running event loop forbids) and
imports the benchmark module directly instead of the `vllm` console script (the CPU build of vLLM lacks the package
metadata that script reads). Random prompts of exactly `input_len` tokens, exactly `output_len` output tokens
(ignore_eos), at most `concurrency` requests in flight, all sent at once: the same load the course client sends.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

_RUNNER = r"""
import json, sys
try:
    from vllm.utils.argparse_utils import FlexibleArgumentParser
except ImportError:                       # older vLLM
    from vllm.utils import FlexibleArgumentParser
from vllm.benchmarks.serve import add_cli_args, main
parser = FlexibleArgumentParser()
add_cli_args(parser)
result = main(parser.parse_args(sys.argv[2:]))
with open(sys.argv[1], "w") as f:
    json.dump({k: v for k, v in result.items() if isinstance(v, (int, float, str))}, f)
"""

# the metrics both tools report, under vLLM's names
COMPARED = ("output_throughput", "median_ttft_ms", "median_tpot_ms", "median_itl_ms", "median_e2el_ms")


def bench_serve_args(base_url: str, model: str, tokenizer: str, *, input_len: int, output_len: int,
                     concurrency: int, num_prompts: int, seed: int = 0) -> list[str]:
    """`vllm bench serve` arguments for a closed-loop run: random token prompts, fixed lengths, at most
    `concurrency` requests in flight. `model` is the name the server serves; `tokenizer` a local path."""
    return ["--backend", "vllm", "--base-url", base_url.rstrip("/"), "--model", model, "--tokenizer", str(tokenizer),
            "--dataset-name", "random", "--random-input-len", str(input_len), "--random-output-len", str(output_len),
            "--random-range-ratio", "0", "--num-prompts", str(num_prompts), "--max-concurrency", str(concurrency),
            "--request-rate", "inf", "--ignore-eos", "--percentile-metrics", "ttft,tpot,itl,e2el",
            "--metric-percentiles", "50,99", "--seed", str(seed), "--disable-tqdm"]


def run_bench_serve(base_url: str, model: str, tokenizer: str, *, input_len: int, output_len: int,
                    concurrency: int, num_prompts: int, seed: int = 0, timeout_s: float = 600,
                    python: str | None = None) -> dict:
    """Run `vllm bench serve` once; returns its result (vLLM's metric names). Raises RuntimeError with the
    benchmark's last output lines if it fails."""
    args = bench_serve_args(base_url, model, tokenizer, input_len=input_len, output_len=output_len,
                            concurrency=concurrency, num_prompts=num_prompts, seed=seed)
    with tempfile.TemporaryDirectory(prefix="course-bench-") as tmp:
        out = Path(tmp) / "result.json"
        proc = subprocess.run([python or sys.executable, "-c", _RUNNER, str(out), *args], capture_output=True,
                              text=True, timeout=timeout_s, cwd=tmp)
        if proc.returncode != 0 or not out.exists():
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
            raise RuntimeError(f"vllm bench serve failed (exit {proc.returncode}):\n{tail}")
        result = json.loads(out.read_text())
    if not result.get("completed"):
        raise RuntimeError(f"vllm bench serve: all {num_prompts} requests failed against {base_url} (model {model!r}): "
                           "is the server up, and is that the name it serves?")
    return result


def client_vs_bench(course: dict, bench: dict, keys=COMPARED):
    """A table of the same metrics from the course client and from `vllm bench serve`, with their ratio."""
    import pandas as pd
    rows = [{"metric": k, "course client": course.get(k), "vllm bench serve": bench.get(k)} for k in keys]
    df = pd.DataFrame(rows).set_index("metric")
    df["client / bench"] = df["course client"] / df["vllm bench serve"]
    return df
