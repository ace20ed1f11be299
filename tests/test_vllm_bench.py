"""`vllm bench serve` (vLLM's own load generator) beside the course client, on the stand-in server."""
import sys
from pathlib import Path

import pytest

from utils.models import resolve_model
from utils.serving import client as bc
from utils.serving.process import ServerProcess, free_port
from utils.serving.vllm_bench import bench_serve_args, client_vs_bench, run_bench_serve
from utils.workload import Request

pytest.importorskip("vllm")
FAKE = str(Path(__file__).with_name("fake_openai_server.py"))
TTFT, ITL, OUT = 0.10, 0.02, 8


def test_arguments_describe_a_closed_loop_run():
    a = bench_serve_args("http://127.0.0.1:1/", "m", "/tok", input_len=16, output_len=8, concurrency=4, num_prompts=8)
    assert a[a.index("--base-url") + 1] == "http://127.0.0.1:1" and "--ignore-eos" in a
    assert a[a.index("--max-concurrency") + 1] == "4" and a[a.index("--random-range-ratio") + 1] == "0"


@pytest.mark.slow
def test_bench_and_course_client_agree_on_a_server_with_known_timings():
    port = free_port()
    with ServerProcess([sys.executable, FAKE, "--port", str(port), "--ttft", str(TTFT), "--itl", str(ITL),
                        "--no-ping"], port, name="fake", startup_timeout_s=30) as srv:
        bench = run_bench_serve(srv.base_url, "fake-model", resolve_model(), input_len=16, output_len=OUT,
                                concurrency=4, num_prompts=8)
        reqs = [Request(prompt=f"p{i}", prompt_len=16, output_len=OUT, id=i) for i in range(8)]
        course = bc.run_benchmark(srv.base_url, "fake-model", reqs, concurrency=4, warmup=0,
                                  api="completions").metrics
        with pytest.raises(RuntimeError, match="all 2 requests failed"):
            run_bench_serve(srv.base_url, "no-such-model", resolve_model(), input_len=16, output_len=OUT,
                            concurrency=2, num_prompts=2)
    assert bench["completed"] == 8 and bench["total_output_tokens"] == 8 * OUT
    assert bench["median_ttft_ms"] == pytest.approx(TTFT * 1e3, rel=0.5)
    assert bench["median_tpot_ms"] == pytest.approx(ITL * 1e3, rel=0.5)
    table = client_vs_bench(course, bench)
    assert table["client / bench"].between(0.7, 1.3).all(), table
