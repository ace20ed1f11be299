"""Every reference solution of 04_speculative_decoding passes the checker the notebook runs, and a wrong answer
fails it (the checkers can fail)."""
import pytest
import torch

from utils.specdec import solutions as S


def test_exercise_1_expected_tokens():
    assert "correct" in S.check_expected_tokens(S.expected_tokens, S.best_gamma)
    with pytest.raises(AssertionError, match="bonus"):
        S.check_expected_tokens(lambda a, g: sum(a ** i for i in range(1, g + 1)), S.best_gamma)


def test_exercise_2_one_position():
    assert "correct" in S.check_sample_one_position(S.sample_one_position)

    def wrong(p, q, g):                      # resample from p instead of the residual
        x = int(torch.multinomial(q, 1, generator=g))
        if float(torch.rand(1, generator=g)) * float(q[x]) < float(p[x]):
            return x
        return int(torch.multinomial(p, 1, generator=g))
    with pytest.raises(AssertionError, match="do not follow p"):
        S.check_sample_one_position(wrong)


def test_exercise_3_prompt_lookup():
    assert "correct" in S.check_prompt_lookup(S.prompt_lookup)
    with pytest.raises(AssertionError):
        S.check_prompt_lookup(lambda t, k, n: [])
