"""Load sweeps: the knee, SLO/cost table, Little's-law check and plots, against the stand-in server."""
import math
import sys
from pathlib import Path

import pandas as pd
import pytest

from utils.serving import sweep as sw
from utils.serving.process import ServerProcess, free_port
from utils.workload import Request

FAKE = str(Path(__file__).with_name("fake_openai_server.py"))


def test_find_knee_and_cost():
    df = pd.DataFrame({"concurrency": [1, 2, 4, 8, 16], "output_throughput": [100, 190, 350, 370, 375],
                       "p99_itl_ms": [10, 11, 13, 25, 50]})
    k = sw.find_knee(df)
    assert k["knee"] == 4 and k["saturated"]
    flat = df.assign(output_throughput=[100, 200, 400, 800, 1600])
    assert sw.find_knee(flat)["saturated"] is False and sw.find_knee(flat)["knee"] == 16
    assert sw.cost_per_million_tokens(1000, 3.6) == pytest.approx(1.0)
    assert sw.cost_per_million_tokens(0, 3.6) == math.inf


def _closed_loop(c, n, service_s=1.0, tokens=10):
    "a perfect closed loop: c slots, each request takes service_s and streams one token per chunk"
    from utils.serving.client import BenchmarkResult, RequestResult
    out = []
    for i in range(n):
        sent = (i // c) * service_s
        out.append(RequestResult(id=i, success=True, output_tokens=tokens, sent_at_s=sent, ttft_s=0.1,
                                 latency_s=service_s, chunk_at_s=[0.1 + k * (service_s - 0.1) / (tokens - 1)
                                                                  for k in range(tokens)]))
    return BenchmarkResult(out, duration_s=(n // c) * service_s, config={"concurrency": c})


def test_steady_state_window_of_a_closed_loop():
    st = sw.steady_state(_closed_loop(c=4, n=40))
    # window: first completion (t=1) to last dispatch (t=9); 4 in flight all along, 4 x 10 tokens per second
    assert st["steady_window_s"] == pytest.approx(8.0)
    assert st["steady_in_flight_over_c"] == pytest.approx(1.0)
    assert st["steady_output_throughput"] == pytest.approx(40.0, rel=0.06)
    assert st["steady_requests"] == 36 and st["steady_median_ttft_ms"] == pytest.approx(100.0)
    # a perfect loop has no ramp or drain to speak of: the whole-run figure agrees
    assert _closed_loop(c=4, n=40).metrics["output_throughput"] == pytest.approx(40.0)
    # one wave only (every request sent at t=0): no steady part, said with NaN
    assert math.isnan(sw.steady_state(_closed_loop(c=4, n=4))["steady_output_throughput"])


def test_sweep_slo_table_littles_law_and_plots():
    port = free_port()
    reqs = lambda c, seed: [Request(prompt_len=3, output_len=6, prompt=f"p{i}", id=i) for i in range(4 * c)]  # noqa: E731
    with ServerProcess([sys.executable, FAKE, "--port", str(port), "--ttft", "0.02", "--itl", "0.01"], port,
                       name="fake", startup_timeout_s=30) as srv:
        df, poll, phases, runs = sw.sweep(srv.base_url, "fake-model", [1, 4], reqs, progress=False, warmup=0)
    assert list(df.concurrency) == [1, 4] and set(runs) == {1, 4} and len(phases) == 2
    assert poll is not None and {"t_s", "running"} <= set(poll.columns)
    # Little's law: with c requests in flight (4c requests per level, ramp and drain included) L is near c and
    # never above it; each stream chunk of the stand-in carries one token, so few chunks are merged
    assert all(0.3 < x <= 1.05 for x in df.littles_L_over_c), df.littles_L_over_c.tolist()
    assert ((df.merged_chunk_fraction >= 0) & (df.merged_chunk_fraction < 0.5)).all(), df.merged_chunk_fraction
    # between ramp and drain the stand-in held close to c requests
    assert all(0.7 < x <= 1.05 for x in df.steady_in_flight_over_c), df.steady_in_flight_over_c.tolist()
    table = sw.slo_table(runs, {"ttft": 1000, "tpot": 1000}, dollars_per_hour=3.6)
    assert table["meets SLO"].all() and (table["$ / 1M output tokens"] > 0).all()
    strict = sw.slo_table(runs, {"ttft": 0.001}, dollars_per_hour=3.6)
    assert not strict["meets SLO"].any()
    knee = sw.find_knee(df)
    fig = sw.plot_sweep(df, knee, "test")
    assert fig.get_dpi() >= 100
    fig = sw.plot_server_metrics(poll, phases, df, "test")
    assert len(fig.axes) >= 2
