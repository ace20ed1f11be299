"""The acceptance rules on probability tensors: greedy prefix matching, and rejection sampling whose output
follows p exactly (the wrong variants must not)."""
import pytest
import torch

from utils.specdec import SpecDecError, check_gamma, greedy_verify, rejection_verify
from utils.specdec.stats import chisquare_test
from utils.specdec.theory import alpha_from_logits, expected_tokens_per_step, predicted_speedup


def test_greedy_verify_prefix_and_bonus():
    logits = torch.zeros(4, 10)
    for i, t in enumerate([3, 5, 7, 9]):
        logits[i, t] = 1.0
    assert greedy_verify(torch.tensor([3, 5, 7]), logits) == (3, 9)      # all accepted: bonus token
    assert greedy_verify(torch.tensor([3, 4, 7]), logits) == (1, 5)      # stops at the first mismatch
    assert greedy_verify(torch.tensor([2, 5, 7]), logits) == (0, 3)
    assert greedy_verify(torch.tensor([], dtype=torch.long), logits[:1]) == (0, 3)


def _first_token_counts(p, q, mode, n=6000, seed=0):
    g = torch.Generator().manual_seed(seed)
    counts = [0] * p.shape[-1]
    for _ in range(n):
        d = torch.multinomial(q[0], 1, generator=g)
        n_acc, tok = rejection_verify(d, q, p, g, mode)
        counts[int(d) if n_acc == 1 else tok] += 1
    return counts


def test_rejection_sampling_first_token_follows_p_and_wrong_rules_do_not():
    p = torch.tensor([[0.5, 0.3, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25]])
    q = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    exact = _first_token_counts(p, q, "exact")
    assert chisquare_test(exact, p[0].tolist())["p_value"] > 1e-3
    for wrong in ("no_ratio", "resample_p"):
        assert chisquare_test(_first_token_counts(p, q, wrong), p[0].tolist())["p_value"] < 1e-6, wrong


def test_rejection_residual_never_emits_a_token_q_overproposes_beyond_p():
    # p puts 0 on token 1; q proposes it often: it must never come out
    p = torch.tensor([[0.6, 0.0, 0.4], [1 / 3, 1 / 3, 1 / 3]])
    q = torch.tensor([[0.1, 0.8, 0.1]])
    counts = _first_token_counts(p, q, "exact", n=2000)
    assert counts[1] == 0


def test_deterministic_drafter_one_hot_q_is_exact():
    p = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6]])
    q = torch.tensor([[0.0, 1.0, 0.0]])                                # n-gram proposal: token 1, always
    g = torch.Generator().manual_seed(1)
    counts = [0, 0, 0]
    for _ in range(5000):
        n, t = rejection_verify(torch.tensor([1]), q, p, g)
        counts[1 if n else t] += 1
    assert chisquare_test(counts, p[0].tolist())["p_value"] > 1e-3


def test_bad_input_messages():
    for bad in (0, -1, 1.5, "4", True):
        with pytest.raises(SpecDecError, match="gamma"):
            check_gamma(bad)
    with pytest.raises(SpecDecError, match="mode"):
        rejection_verify(torch.tensor([0]), torch.ones(1, 2) / 2, torch.ones(2, 2) / 2, mode="fast")
    with pytest.raises(SpecDecError, match="shapes"):
        rejection_verify(torch.tensor([0, 1]), torch.ones(2, 2) / 2, torch.ones(2, 2) / 2)


def test_theory_formulas():
    assert expected_tokens_per_step(0.0, 5) == 1.0
    assert expected_tokens_per_step(1.0, 5) == 6.0
    assert expected_tokens_per_step(0.5, 1) == pytest.approx(1.5)
    assert expected_tokens_per_step(0.8, 4) == pytest.approx(sum(0.8 ** i for i in range(5)))
    assert predicted_speedup(0.8, 4, 0.0) == pytest.approx(expected_tokens_per_step(0.8, 4))
    assert predicted_speedup(1.0, 3, 1.0) == pytest.approx(1.0)         # self-drafting never pays
    t = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    assert alpha_from_logits(t, t) == 1.0
    assert alpha_from_logits(t, t.flip(-1)) == 0.0
    assert alpha_from_logits(t, t, temperature=1.0) == pytest.approx(1.0)
