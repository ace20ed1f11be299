"""The chi-square survival function the exactness test relies on (no scipy needed), and the test around it."""
import math
import random

import pytest

from utils.specdec.stats import chi2_sf, chisquare_test, regularized_gamma_q, tv_distance


@pytest.mark.parametrize("x", [0.01, 0.5, 1.0, 3.0, 10.0, 40.0, 200.0])
def test_chi2_sf_two_dof_is_exp(x):
    assert chi2_sf(x, 2) == pytest.approx(math.exp(-x / 2), rel=1e-10, abs=1e-300)


@pytest.mark.parametrize("x,df,p", [(3.841458820694124, 1, 0.05), (6.634896601021214, 1, 0.01),
                                    (18.307038053275146, 10, 0.05), (124.34211340400407, 100, 0.05),
                                    (9.487729036781154, 4, 0.05), (0.1148318, 3, 0.99)])
def test_chi2_sf_textbook_critical_values(x, df, p):
    assert chi2_sf(x, df) == pytest.approx(p, rel=1e-6)


def test_chi2_sf_one_dof_closed_form():
    # df = 1: P(X >= x) = erfc(sqrt(x / 2))
    for x in [0.001, 0.3, 2.0, 7.5, 30.0]:
        assert chi2_sf(x, 1) == pytest.approx(math.erfc(math.sqrt(x / 2)), rel=1e-9)


def test_regularized_gamma_against_scipy_when_present():
    special = pytest.importorskip("scipy.special")
    for a in [0.5, 1, 2.5, 10, 57.5, 300]:
        for x in [0.1, 1, a * 0.8, a, a * 1.3 + 2, 4 * a + 10]:
            assert regularized_gamma_q(a, x) == pytest.approx(float(special.gammaincc(a, x)), rel=1e-8, abs=1e-300)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        chi2_sf(1.0, 0)
    with pytest.raises(ValueError):
        regularized_gamma_q(-1, 1)
    with pytest.raises(ValueError):
        chisquare_test([1, 2], [0.5, 0.2])         # probabilities do not sum to 1


def test_chisquare_accepts_the_right_law_and_rejects_a_wrong_one():
    rng = random.Random(0)
    probs = [0.4, 0.3, 0.2, 0.1]
    draws = rng.choices(range(4), weights=probs, k=4000)
    counts = [draws.count(i) for i in range(4)]
    assert chisquare_test(counts, probs)["p_value"] > 0.01
    assert chisquare_test(counts, [0.35, 0.3, 0.2, 0.15])["p_value"] < 1e-6


def test_chisquare_pools_rare_cells_and_flags_impossible_ones():
    r = chisquare_test([50, 50, 0, 0], [0.5, 0.499, 0.0005, 0.0005])
    assert r["cells"] == 3 and r["df"] == 2
    r = chisquare_test([50, 49, 1], [0.5, 0.5, 0.0])
    assert r["p_value"] == 0.0 and r["impossible_observations"] == 1


def test_tv_distance():
    assert tv_distance([1, 0], [0, 1]) == 1.0
    assert tv_distance([0.2, 0.8], [2, 8]) == pytest.approx(0.0)
