"""Speculative decoding from scratch: draft γ tokens cheaply, verify them with ONE target forward, keep the
longest prefix the target agrees with (greedy) or accept each with probability min(1, p/q) and resample a
rejection from the residual max(0, p - q) (Leviathan et al. 2023, arXiv:2211.17192; Chen et al. 2023,
arXiv:2302.01318). The output is exactly the target's: token for token when greedy, in distribution when sampled.

    verify     the acceptance rules on probability tensors (exact, plus two deliberately wrong ones)
    drafters   n-gram prompt lookup (no model) and a draft model with its own rolled-back KV cache
    loop       speculative_generate / target_generate on any pair of causal LMs sharing a tokenizer
    theory     expected tokens per step, predicted speed-up, α from the two models' distributions
    stats      chi-square test (own regularized-gamma survival function), total variation
    synthetic  a tiny random pair of causal LMs whose exact output distribution can be enumerated
    workloads  prompts where drafting pays (edit code, copy the input) and where it does not
    vllm_spec  vLLM speculative_config builders and its spec-decode counters
    solutions  reference solutions of the notebook's exercises, with their checkers
"""
from .drafters import ModelDrafter, NGramDrafter, SelfDrafter, check_same_tokenizer, ngram_propose
from .loop import SpecResult, SpecStats, rollback, speculative_generate, target_generate
from .stats import chi2_sf, chisquare_test, regularized_gamma_q, tv_distance
from .theory import expected_tokens_per_step, predicted_speedup, alpha_from_logits
from .verify import SpecDecError, check_gamma, greedy_verify, rejection_verify, VERIFY_MODES

__all__ = ["ModelDrafter", "NGramDrafter", "SelfDrafter", "check_same_tokenizer", "ngram_propose",
           "SpecResult", "SpecStats", "rollback", "speculative_generate", "target_generate", "chi2_sf",
           "chisquare_test", "regularized_gamma_q", "tv_distance", "expected_tokens_per_step",
           "predicted_speedup", "alpha_from_logits", "SpecDecError", "check_gamma", "greedy_verify",
           "rejection_verify", "VERIFY_MODES"]
