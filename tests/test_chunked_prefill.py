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


def test_step_cost_fit_recovers_the_attention_term_from_chunked_steps():
    """Steps timed by a known cost (with prefill attention) give back that cost; without the chunks the fit
    cannot explain the long-context steps."""
    import random
    from utils.kv.chunked_prefill import StepCost
    true = StepCost(overhead=3e-3, per_token=2e-5, per_attn=4e-9)
    rng = random.Random(0)
    tokens, secs, chunks = [], [], []
    for _ in range(300):
        ch = [(rng.randrange(0, 16000), rng.randrange(1, 2048)) for _ in range(rng.randrange(0, 3))]
        t = sum(c for _, c in ch) + rng.randrange(0, 64)                     # prefill chunks + decodes
        tokens.append(t); chunks.append(ch); secs.append(true(t, ch) * (1 + rng.uniform(-0.01, 0.01)))
    fit = StepCost.fit(tokens, secs, chunks)
    assert abs(fit.overhead / true.overhead - 1) < 0.1 and abs(fit.per_token / true.per_token - 1) < 0.1
    assert abs(fit.per_attn / true.per_attn - 1) < 0.05
    two = StepCost.fit(tokens, secs)
    err = lambda c: sum((c(t, ch if c is fit else ()) - s) ** 2 for t, ch, s in zip(tokens, chunks, secs))
    assert err(fit) < 0.01 * err(two)


def test_step_chunks_follows_each_prompt_through_its_chunks():
    from utils.kv.chunked_prefill import step_chunks
    run = {"requests": [{"id": 0, "prompt_len": 10}, {"id": 1, "prompt_len": 3}],
           "steps": [{"per_request": {0: 4}}, {"per_request": {0: 4, 1: 3}}, {"per_request": {0: 2, 1: 1}},
                     {"per_request": {0: 1, 1: 1}}]}
    assert step_chunks(run) == [[(0, 4)], [(4, 4), (0, 3)], [(8, 2)], []]
