"""The benchmark client against a fake streaming server with known timings, and the metric definitions."""
import math
import sys
from pathlib import Path

import pytest

from utils.serving import client as bc
from utils.serving.process import ServerProcess, free_port
from utils.workload import Request

FAKE = str(Path(__file__).with_name("fake_openai_server.py"))
TTFT, ITL = 0.20, 0.05


def _req(i, out=8):
    return Request(messages=[{"role": "user", "content": f"hello {i}"}], prompt=f"hello {i}", prompt_len=3,
                   output_len=out, id=i)


@pytest.fixture(scope="module")
def fake():
    port = free_port()
    with ServerProcess([sys.executable, FAKE, "--port", str(port), "--ttft", str(TTFT), "--itl", str(ITL)],
                       port, name="fake", startup_timeout_s=30) as srv:
        yield srv


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_usage_in_the_closing_choice_chunk_is_read_and_not_timed(api):
    """llama.cpp and `transformers serve` put `usage` in a last chunk that has a finish_reason and no text: its
    token count must be used, and that chunk must not count as a token (no extra gap, no later E2EL)."""
    port = free_port()
    with ServerProcess([sys.executable, FAKE, "--port", str(port), "--ttft", str(TTFT), "--itl", str(ITL),
                        "--usage-in-last-choice"], port, name="fake-llamacpp-style", startup_timeout_s=30) as srv:
        res = bc.run_benchmark(srv.base_url, "fake-model", [_req(i) for i in range(2)], concurrency=2, warmup=0,
                               api=api, force_close=True)
    assert res.metrics["completed"] == 2 and res.metrics["total_output_tokens"] == 16
    assert all(r.prompt_len == 7 and len(r.itl_s) == 7 and len(r.chunk_at_s) == 8 for r in res.results)
    assert res.metrics["median_e2el_ms"] <= (TTFT + 7 * ITL) * 1e3 + 400


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_known_timings(fake, api):
    reqs = [_req(i) for i in range(4)]
    res = bc.run_benchmark(fake.base_url, "fake-model", reqs, concurrency=4, warmup=1, api=api)
    m = res.metrics
    assert m["completed"] == 4 and m["failed"] == 0
    assert m["total_output_tokens"] == 32 and m["total_input_tokens"] == 4 * 7     # from usage
    # TTFT ~ 200 ms, ITL ~ 50 ms, TPOT = (E2EL - TTFT) / 7 ~ 50 ms, E2EL ~ 200 + 7 * 50 ms (slack: busy CI)
    assert TTFT * 1e3 - 5 <= m["median_ttft_ms"] <= TTFT * 1e3 + 150
    assert ITL * 1e3 - 5 <= m["median_itl_ms"] <= ITL * 1e3 + 40
    assert ITL * 1e3 - 5 <= m["median_tpot_ms"] <= ITL * 1e3 + 40
    assert (TTFT + 7 * ITL) * 1e3 - 10 <= m["median_e2el_ms"] <= (TTFT + 7 * ITL) * 1e3 + 400
    df = res.requests_df()
    assert (df["chunks"] == 8).all() and (df["output_tokens"] == 8).all()
    assert all(len(r.itl_s) == 7 for r in res.results)
    assert "".join(res.results[0].text.split()) == "".join(f"t{i}" for i in range(8))


def test_concurrency_limits_in_flight(fake):
    # 4 requests of ~0.55 s each at concurrency 1 run one after another; at concurrency 4 they overlap.
    reqs = [_req(i) for i in range(4)]
    serial = bc.run_benchmark(fake.base_url, "fake-model", reqs, concurrency=1, warmup=0)
    parallel = bc.run_benchmark(fake.base_url, "fake-model", reqs, concurrency=4, warmup=0)
    assert serial.duration_s > 2.5 * parallel.duration_s
    sent = sorted(r.sent_at_s for r in serial.results)
    fin = sorted(r.finished_at_s for r in serial.results)
    assert all(s >= f - 0.02 for s, f in zip(sent[1:], fin[:-1]))     # the next starts after one finishes
    assert serial.metrics["request_throughput"] < parallel.metrics["request_throughput"]


def test_goodput_and_slo(fake):
    reqs = [_req(i, out=2 if i % 2 else 8) for i in range(4)]
    res = bc.run_benchmark(fake.base_url, "fake-model", reqs, concurrency=4, warmup=0,
                           slo_ms={"e2el": (TTFT + 4 * ITL) * 1e3})   # midway: only the 2-token requests pass
    m = res.metrics
    assert m["good_requests"] == 2
    assert m["request_goodput"] == pytest.approx(2 / res.duration_s)
    assert bc.compute_metrics(res.results, res.duration_s, {"ttft": 1e6})["good_requests"] == 4


def test_a_run_where_every_request_fails_raises_with_the_first_error(fake):
    # Without warm-up, a dead or wrong endpoint must not come back as "0 tok/s, 4 failed" and no error.
    with pytest.raises(RuntimeError, match=r"all 4 requests failed.*404"):
        bc.run_benchmark(fake.base_url, "no-such-model", [_req(i) for i in range(4)], warmup=0)
    with pytest.raises(RuntimeError, match="warm-up"):
        bc.run_benchmark(fake.base_url, "no-such-model", [_req(0)], warmup=1)


def test_metric_definitions_match_vllm():
    # Hand-made results: TPOT = (latency - ttft) / (tokens - 1); 1-token requests have no TPOT.
    r1 = bc.RequestResult(id=0, success=True, prompt_len=10, output_tokens=5, ttft_s=0.1, latency_s=0.5,
                          itl_s=[0.1, 0.1, 0.1, 0.1])
    r2 = bc.RequestResult(id=1, success=True, prompt_len=20, output_tokens=1, ttft_s=0.3, latency_s=0.3)
    r3 = bc.RequestResult(id=2, success=False, error="x")
    m = bc.compute_metrics([r1, r2, r3], duration_s=2.0, slo_ms={"tpot": 50})
    assert r1.tpot_s == pytest.approx(0.1) and math.isnan(r2.tpot_s)
    assert m["mean_tpot_ms"] == pytest.approx(100)          # only r1 has a TPOT
    assert m["completed"] == 2 and m["failed"] == 1
    assert m["request_throughput"] == pytest.approx(1.0)
    assert m["output_throughput"] == pytest.approx(3.0)
    assert m["total_token_throughput"] == pytest.approx(18.0)
    assert m["mean_ttft_ms"] == pytest.approx(200)
    assert m["good_requests"] == 1                           # r2 (tpot counted as 0) passes, r1 does not
    assert m["p50_itl_ms"] == pytest.approx(100)
    with pytest.raises(ValueError, match="unknown SLO"):
        bc.compute_metrics([r1], 1.0, {"latency": 5})


def test_poisson_arrivals_are_seeded_and_span_n_over_rate():
    a = bc.arrival_times(50, request_rate=10, seed=1)
    assert a == bc.arrival_times(50, request_rate=10, seed=1)
    assert a != bc.arrival_times(50, request_rate=10, seed=2)
    assert a[-1] == pytest.approx(5.0) and all(x < y for x, y in zip(a, a[1:]))
    assert bc.arrival_times(3) == [0.0, 0.0, 0.0]
    assert bc.arrival_times(4, 2, burstiness=math.inf) == pytest.approx([0.5, 1.0, 1.5, 2.0])


def test_request_rate_paces_sending(fake):
    reqs = [_req(i, out=2) for i in range(6)]
    res = bc.run_benchmark(fake.base_url, "fake-model", reqs, request_rate=5, warmup=0, seed=0)
    sent = sorted(r.sent_at_s for r in res.results)
    assert sent[-1] == pytest.approx(6 / 5, abs=0.3)          # n / rate


def test_max_seconds_bounds_the_run(fake):
    reqs = [_req(i, out=8) for i in range(50)]
    res = bc.run_benchmark(fake.base_url, "fake-model", reqs, concurrency=1, warmup=0, max_seconds=1.0)
    assert 1 <= len(res.results) <= 4


def test_sse_parsing():
    assert bc.parse_sse_line(": ping") is None and bc.parse_sse_line("") is None
    assert bc.parse_sse_line("data: [DONE]") == "[DONE]"
    assert bc.parse_sse_line('data: {"a": 1}') == {"a": 1}


def test_payloads():
    r = _req(0, out=5)
    path, body = bc.build_payload(r, "m", "chat")
    assert path == "/v1/chat/completions" and body["messages"] == r.messages
    assert body["max_completion_tokens"] == 5 and body["stream"] and body["stream_options"]["include_usage"]
    path, body = bc.build_payload(r, "m", "completions", ignore_eos=False)
    assert path == "/v1/completions" and body["prompt"] == r.prompt and "ignore_eos" not in body
    with pytest.raises(ValueError):
        bc.build_payload(r, "m", "embeddings")


def test_hundreds_of_concurrent_streams_against_uvicorn():
    # vLLM's front end is uvicorn. At 256 streams httpx's pool merged chunks (median ITL ~0.02 ms instead of the
    # server's 10 ms) and raised ReadErrors (encode/httpx#3348); the client must measure the server, not itself.
    pytest.importorskip("uvicorn")
    from tests import asgi_stream_app as app_mod
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "asgi_stream_app:app", "--port", str(port), "--log-level", "warning",
           "--timeout-keep-alive", "5", "--app-dir", str(Path(__file__).parent)]
    with ServerProcess(cmd, port, name="uvicorn-stream", startup_timeout_s=30) as srv:
        res = bc.run_benchmark(srv.base_url, "m", [_req(i, out=50) for i in range(512)], concurrency=256, warmup=4)
    s = res.summary()
    assert s["failed"] == 0, {r.error for r in res.results if not r.success}
    assert s["median_itl_ms"] > 0.5 * app_mod.ITL_S * 1e3, s["median_itl_ms"]
