"""Time the two phases of LLM inference on a transformers model, and count what they must do.

prefill: one forward over the whole prompt (batch x prompt_len tokens at once) -> the KV cache;
decode:  one forward of ONE new token per sequence, reading the whole KV cache.
Both are timed with `utils.measure.timing.benchmark` (synchronised, warmed up, repeated).
"""
from __future__ import annotations

from .memory import dtype_bytes, kv_cache_bytes_for
from .roofline import ForwardCost, attention_flops_per_token_per_ctx, forward_cost
from .timing import Timing, benchmark


def random_ids(model, batch: int, length: int, seed: int = 0):
    """Token ids drawn uniformly from the vocabulary (skipping the first 100 special-ish ids)."""
    import torch
    g = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    return torch.randint(100, vocab - 1, (batch, length), generator=g).to(model.device)


def time_prefill(model, batch: int, prompt_len: int, repeat: int = 5, warmup: int = 1,
                 max_seconds: float = 20) -> Timing:
    import torch
    ids = random_ids(model, batch, prompt_len)
    with torch.inference_mode():
        return benchmark(lambda: model(input_ids=ids, use_cache=False, logits_to_keep=1), warmup=warmup,
                         repeat=repeat, device=str(model.device), max_seconds=max_seconds)


def time_decode_step(model, batch: int, context: int, repeat: int = 10, warmup: int = 2,
                     max_seconds: float = 20) -> Timing:
    """Time one decode step (1 new token per sequence) against a KV cache of `context` tokens.

    The cache is cropped back to `context` after every step, so each repetition does identical work.
    """
    import torch
    from transformers import DynamicCache
    ids = random_ids(model, batch, context)
    nxt = random_ids(model, batch, 1, seed=1)
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)

        def step():
            model(input_ids=nxt, past_key_values=cache, use_cache=True)
            cache.crop(-1)        # drop the token just appended: every repetition sees `context` tokens

        return benchmark(step, warmup=warmup, repeat=repeat, device=str(model.device), max_seconds=max_seconds)


def phase_cost(config, n_params: int, dtype, batch: int, new_tokens: int, context: int) -> ForwardCost:
    """FLOP and minimum bytes of one forward, from the config (no model needed: works for the 8B shape).

    One logits row per sequence, as `time_prefill` (logits_to_keep=1) and `time_decode_step` compute.
    `n_params` must count a tied embedding once (as model.parameters() and memory.param_count_from_config do).
    """
    return forward_cost(n_params=n_params, weight_bytes_per_param=dtype_bytes(dtype),
                        kv_bytes_per_token=kv_cache_bytes_for(config, 1, dtype), batch=batch,
                        new_tokens=new_tokens, context=context,
                        attn_flops_per_token_per_ctx=attention_flops_per_token_per_ctx(config),
                        embedding_params=config.vocab_size * config.hidden_size,
                        tied_embeddings=getattr(config, "tie_word_embeddings", False),   # memory.py's default too
                        logit_tokens=batch)


def sdpa_backend_comparison(model, batch: int = 1, context: int = 512, repeat: int = 10) -> list[dict]:
    """Time one decode step with PyTorch SDPA restricted to each backend in turn (and unrestricted).

    SDPA picks a kernel by heuristics. For decode (one query token against a cache whose length changes every
    step) a backend with a large per-call host cost can dominate a small model's step time: measure before
    trusting a batch-1 number. Backends that cannot run here are reported, not hidden.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    rows = []
    choices = [("default (PyTorch's choice)", None)] + [
        (name, getattr(SDPBackend, name)) for name in
        ("CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH") if hasattr(SDPBackend, name)]
    for label, backend in choices:
        try:
            if backend is None:
                t = time_decode_step(model, batch, context, repeat=repeat)
            else:
                with sdpa_kernel([backend]):
                    t = time_decode_step(model, batch, context, repeat=repeat)
            rows.append({"sdpa backend": label, "step_ms": t.median * 1e3, "p10_ms": t.p10 * 1e3,
                         "p90_ms": t.p90 * 1e3, "status": "ok"})
        except Exception as e:  # noqa: BLE001 - a backend that cannot serve this shape/device is a result
            rows.append({"sdpa backend": label, "step_ms": float("nan"), "p10_ms": float("nan"),
                         "p90_ms": float("nan"), "status": f"not available: {str(e).splitlines()[0][:60]}"})
    return rows
