"""Trace replay: the synthetic trace is reproducible and the waste accounting is right on tiny cases."""
import pytest

from utils.kv.trace import Request, replay, synthetic_trace


def test_synthetic_trace_is_seeded_and_bounded():
    a, b = synthetic_trace(200, seed=3), synthetic_trace(200, seed=3)
    assert a == b and a != synthetic_trace(200, seed=4)
    assert all(1 <= r.prompt_len and 1 <= r.output_len and r.total_len <= 2048 for r in a)
    assert [r.arrival for r in a] == sorted(r.arrival for r in a)
    mean_out = sum(r.output_len for r in a) / len(a)
    assert 150 < mean_out < 600, "log-normal with mean 338 (before clipping)"


def test_one_request_exact_accounting():
    trace = [Request(arrival=0, prompt_len=10, output_len=4)]
    # contiguous-max reserves 32 slots for 4 steps; tokens stored after each step: 11, 12, 13, 14
    r = replay(trace, "contiguous-max", capacity=64, max_model_len=32)
    assert r.used == [11, 12, 13, 14] and r.reserved == [32] * 4 and r.tokens_out == 4
    assert r.waste_pct == pytest.approx(100 * (1 - 50 / 128))
    assert r.reserved_for_future_pct == pytest.approx(100 * (3 + 2 + 1 + 0) / 128)
    # oracle reserves exactly 14: only "not yet used" waste
    r = replay(trace, "contiguous-oracle", capacity=64, max_model_len=32)
    assert r.never_used_pct == pytest.approx(0) and r.waste_pct > 0
    # paged with blocks of 4: 11 tokens -> 3 blocks (12 slots), then 12, 13 (4 blocks), 14
    r = replay(trace, "paged", capacity=64, block_size=4, max_model_len=32)
    assert r.reserved == [12, 12, 16, 16] and r.used == [11, 12, 13, 14]


def test_paged_wastes_less_and_batches_more():
    trace = synthetic_trace(150, seed=0, rate=1.0)
    results = {p: replay(trace, p, capacity=16384) for p in
               ("contiguous-max", "contiguous-pow2", "contiguous-oracle", "paged")}
    waste = {p: r.waste_pct for p, r in results.items()}
    assert waste["contiguous-max"] > waste["contiguous-pow2"] > waste["contiguous-oracle"] > waste["paged"]
    assert waste["paged"] < 4, "paged waste is at most one partly filled block per sequence"
    assert results["paged"].mean_batch > 1.5 * results["contiguous-max"].mean_batch
    for r in results.values():
        assert r.tokens_out == sum(t.output_len for t in trace), "every requested token is produced once"


def test_paged_waste_grows_with_block_size_and_preemption_recovers():
    trace = synthetic_trace(100, seed=1, rate=2.0)
    w = [replay(trace, "paged", capacity=8192, block_size=b).waste_pct for b in (1, 16, 256)]
    assert w[0] == pytest.approx(0) and w[0] < w[1] < w[2]
    tight = replay(trace, "paged", capacity=2048, block_size=16)     # forces preemptions
    assert tight.preemptions > 0 and tight.tokens_out == sum(t.output_len for t in trace)


def test_bad_inputs_are_reported():
    with pytest.raises(ValueError, match="unknown policy"):
        replay([Request(0, 1, 1)], "contiguous-magic", capacity=4096)
    with pytest.raises(ValueError, match="max_model_len"):
        replay([Request(0, 1, 1)], "contiguous-max", capacity=100)


def test_paged_admission_keeps_the_watermark_free():
    # 100 blocks of 4 slots, watermark 10%: after A takes 50 blocks, B (needs 45) must wait for A to finish,
    # since admitting it would leave fewer than 10 blocks for running requests to grow into.
    trace = [Request(arrival=0, prompt_len=199, output_len=1), Request(arrival=0, prompt_len=179, output_len=1)]
    r = replay(trace, "paged", capacity=400, block_size=4, max_model_len=400, watermark=0.10)
    assert max(r.running) == 1 and r.preemptions == 0
    r = replay(trace, "paged", capacity=400, block_size=4, max_model_len=400, watermark=0.0)
    assert max(r.running) == 2                        # without the watermark both fit at once


def test_out_of_blocks_preempts_the_newest_request():
    # A (arrives first) and B both grow until the pool of 4 blocks is full: vLLM preempts the newest (B).
    trace = [Request(arrival=0, prompt_len=4, output_len=12, id=0), Request(arrival=1, prompt_len=4, output_len=12, id=1)]
    r = replay(trace, "paged", capacity=16, block_size=4, max_model_len=16, watermark=0.0)
    assert r.preemptions >= 1 and r.preempted_ids[0] == 1


def test_first_fit_takes_a_hole_of_exactly_the_right_size():
    from utils.kv.trace import _FirstFit
    space = _FirstFit(30)
    assert space.alloc(0, 10) and space.alloc(1, 10) and space.alloc(2, 10)
    space.free(1)                                     # a hole [10, 20) of exactly 10 slots
    assert space.alloc(3, 10) and space.regions[3] == (10, 10)
    assert not space.alloc(4, 1)                      # and now nothing is left
