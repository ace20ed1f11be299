import math

import pytest
import torch

from utils.measure import forward_phases


@pytest.fixture(scope="module")
def model(course_model):
    return course_model


def test_random_ids_are_reproducible_and_in_vocab(model):
    a = forward_phases.random_ids(model, 2, 16, seed=3)
    b = forward_phases.random_ids(model, 2, 16, seed=3)
    assert torch.equal(a, b) and a.shape == (2, 16)
    assert int(a.min()) >= 100 and int(a.max()) < model.config.vocab_size


def test_decode_step_keeps_the_cache_at_the_requested_context(model, monkeypatch):
    # every repetition must see exactly `context` cached tokens, or the timings would drift upward
    seen = []
    original = model.forward

    def spy(*args, **kwargs):
        cache = kwargs.get("past_key_values")
        if cache is not None and kwargs["input_ids"].shape[1] == 1:
            seen.append(cache.get_seq_length())
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "forward", spy)
    t = forward_phases.time_decode_step(model, batch=2, context=24, repeat=3, warmup=1)
    assert len(t.samples) == 3
    assert seen == [24] * 4


def test_prefill_is_slower_than_one_decode_step(model):
    pre = forward_phases.time_prefill(model, 1, 256, repeat=3)
    dec = forward_phases.time_decode_step(model, 1, 256, repeat=3)
    assert pre.median > dec.median          # 256 tokens of work vs 1 (ratio only, generous)


def test_phase_cost_intensities(model):
    n = sum(p.numel() for p in model.parameters())
    prefill = forward_phases.phase_cost(model.config, n, "bf16", batch=1, new_tokens=512, context=0)
    decode = forward_phases.phase_cost(model.config, n, "bf16", batch=1, new_tokens=1, context=512)
    assert prefill.intensity > 100 * decode.intensity
    assert math.isclose(decode.intensity, 1.0, rel_tol=0.1)     # ~2 FLOP per 2-byte weight at batch 1


def test_sdpa_backend_comparison_reports_every_backend(model):
    rows = forward_phases.sdpa_backend_comparison(model, batch=1, context=16, repeat=2)
    assert rows[0]["sdpa backend"].startswith("default") and rows[0]["status"] == "ok"
    assert {r["sdpa backend"] for r in rows} >= {"MATH"}
    assert all(r["status"] == "ok" or r["status"].startswith("not available") for r in rows)
