import math

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from utils.measure import forward_phases, roofline


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


def _flops_counted_by_torch(model, **forward_kwargs) -> int:
    """FLOP of one forward as torch's FlopCounterMode counts them, from the shapes of every matmul that runs.

    SDPA runs on its MATH backend: CPU's fused kernel has no FLOP formula in FlopCounterMode (it would count 0 for
    attention), while MATH runs attention as plain matmuls, which it counts.
    """
    with torch.inference_mode(), sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
        model(**forward_kwargs)
    return counter.get_total_flops()


def _check_phase_cost_against_torch(model, batch: int, prompt: int, context: int):
    """phase_cost vs FlopCounterMode for a prefill (logits_to_keep=1) and one decode step against `context` tokens."""
    from transformers import DynamicCache
    cfg = model.config
    n_params = sum(p.numel() for p in model.parameters())        # a tied embedding table counts once
    attn_per_query_key = roofline.attention_flops_per_token_per_ctx(cfg)

    ids = forward_phases.random_ids(model, batch, prompt)
    counted = _flops_counted_by_torch(model, input_ids=ids, use_cache=False, logits_to_keep=1)
    hand = forward_phases.phase_cost(cfg, n_params, "float32", batch=batch, new_tokens=prompt, context=0).flops
    # SDPA computes the whole prompt x prompt score square and masks it afterwards; phase_cost counts only the causal
    # pairs that are used, so torch's count is larger by the masked triangle (the diagonal stays).
    masked_triangle = attn_per_query_key * batch * prompt * (prompt - 1) // 2
    assert counted == pytest.approx(hand + masked_triangle, rel=0.03), "prefill"

    cache = DynamicCache(config=cfg)
    with torch.inference_mode():
        model(input_ids=forward_phases.random_ids(model, batch, context), past_key_values=cache, use_cache=True,
              logits_to_keep=1)
    nxt = forward_phases.random_ids(model, batch, 1, seed=1)
    counted = _flops_counted_by_torch(model, input_ids=nxt, past_key_values=cache, use_cache=True)
    hand = forward_phases.phase_cost(cfg, n_params, "float32", batch=batch, new_tokens=1, context=context).flops
    assert counted == pytest.approx(hand, rel=0.03), "decode"     # 1 query x (context + 1) keys: nothing masked


def test_phase_cost_flops_match_torch_on_the_tied_course_model(model):
    # context 256: attention is ~7% of the decode step here, so dropping or doubling it fails the 3% check
    assert model.config.tie_word_embeddings
    _check_phase_cost_against_torch(model, batch=2, prompt=64, context=256)


def test_phase_cost_flops_match_torch_on_an_untied_llama():
    # A large vocabulary next to a tiny body: counting the head for every prompt token, the input gather as a
    # matmul, or the untied head as tied would each be far outside 3%.
    from transformers import AutoModelForCausalLM, LlamaConfig
    cfg = LlamaConfig(vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                      max_position_embeddings=256)
    torch.manual_seed(0)
    tiny = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="sdpa").eval()
    assert tiny.lm_head.weight.data_ptr() != tiny.model.embed_tokens.weight.data_ptr()
    _check_phase_cost_against_torch(tiny, batch=2, prompt=32, context=48)


def test_sdpa_backend_comparison_reports_every_backend(model):
    rows = forward_phases.sdpa_backend_comparison(model, batch=1, context=16, repeat=2)
    assert rows[0]["sdpa backend"].startswith("default") and rows[0]["status"] == "ok"
    assert {r["sdpa backend"] for r in rows} >= {"MATH"}
    assert all(r["status"] == "ok" or r["status"].startswith("not available") for r in rows)
