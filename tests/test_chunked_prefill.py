"""The token-budget scheduler simulation: budgets respected, chunking spreads a prompt, decode stalls."""
import numpy as np
import pytest

from utils.kv.chunked_prefill import StepCost, latency_summary, simulate


def trace():
    return [(0.0, 32, 60) for _ in range(8)] + [(0.05, 3000, 4), (0.25, 3000, 4)]


def test_budget_is_respected_and_prompt_is_chunked():
    res = simulate(trace(), policy="chunked", token_budget=512, cost=StepCost(2e-3, 1e-5))
    assert res.step_tokens().max() <= 512
    assert all(r.generated == r.output_len for r in res.requests)
    # the 3000-token prompt needs ceil(3000 / (512 - decodes)) steps at least
    assert sum(1 for s in res.steps if s.prefill_tokens) >= 3000 // 512


def test_whole_prefill_stalls_decodes_and_chunking_cuts_p99():
    cost = StepCost(2e-3, 2e-5)
    whole = latency_summary(simulate(trace(), policy="whole", token_budget=4096, cost=cost), ids=set(range(8)))
    chunk = latency_summary(simulate(trace(), policy="chunked", token_budget=256, cost=cost), ids=set(range(8)))
    assert whole["itl_max_ms"] > 2 * chunk["itl_max_ms"]
    assert whole["itl_p50_ms"] == pytest.approx(chunk["itl_p50_ms"], rel=0.5)


def test_prefill_first_pauses_decodes():
    res = simulate(trace(), policy="prefill_first", token_budget=4096, cost=StepCost(1e-3, 1e-5))
    assert any(s.prefill_tokens and s.decode_tokens == 0 for s in res.steps[1:])


def test_ttft_grows_as_budget_shrinks():
    cost = StepCost(4e-3, 1e-5)
    t = [latency_summary(simulate(trace(), policy="chunked", token_budget=b, cost=cost), ids={8, 9})["ttft_p50_ms"]
         for b in (128, 1024, 4096)]
    assert t[0] > t[1] >= t[2]


def test_fit_recovers_cost():
    x = np.array([1, 100, 500, 2000])
    c = StepCost.fit(x, 3e-3 + 2e-5 * x)
    assert c.overhead == pytest.approx(3e-3) and c.per_token == pytest.approx(2e-5)
    with pytest.raises(ValueError):
        StepCost.fit([5, 5], [1, 1])


def test_bad_input_messages():
    with pytest.raises(ValueError, match="max_model_len"):
        simulate([(0, 9000, 10)], max_model_len=8192)
    with pytest.raises(ValueError, match="never splits"):
        simulate([(0, 3000, 10)], policy="whole", token_budget=1024)
    with pytest.raises(ValueError, match="policy"):
        simulate([(0, 10, 10)], policy="fifo")
