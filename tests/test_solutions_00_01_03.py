"""Every reference solution of 00, 01 and 03 passes its checker, and each checker catches a typical mistake."""
import math

import pytest

from utils.kv import solutions_01 as s01
from utils.measure import solutions_00 as s00
from utils.serving import solutions_03 as s03

PAIRS = [(s00.check_ex1, s00.ex1_decode_ceiling_tok_s), (s00.check_ex2, s00.ex2_critical_batch),
         (s01.check_ex1, s01.ex1_kv_bytes_per_token), (s01.check_ex2, s01.ex2_paged_blocks_and_waste),
         (s03.check_ex1, s03.ex1_tpot_ms), (s03.check_ex2, s03.ex2_dollars_per_million)]


@pytest.mark.parametrize("check, reference", PAIRS, ids=lambda f: getattr(f, "__name__", ""))
def test_reference_passes_its_checker(check, reference):
    assert check(reference) > 0


WRONG = [
    (s00.check_ex1, lambda n, b, kv, ctx, bw: bw / (n * b)),                       # forgot the KV cache
    (s00.check_ex2, lambda ridge, bpp: round(ridge / 2)),                          # forgot bytes per parameter
    (s01.check_ex1, lambda c: 2 * c.num_hidden_layers * c.num_attention_heads
     * (c.hidden_size // c.num_attention_heads) * 2),                             # query heads, not KV heads
    (s01.check_ex2, lambda lens, bs: (sum(n // bs for n in lens), 0)),            # floor instead of ceil
    (s03.check_ex1, lambda ttft, lat, n: (lat - ttft) / n * 1e3),                  # divided by n, not n - 1
    (s03.check_ex2, lambda tps, price: price / tps * 1e6 if tps else math.inf),    # per second vs per hour
]


@pytest.mark.parametrize("check, wrong", WRONG, ids=lambda f: getattr(f, "__name__", ""))
def test_checker_catches_a_typical_mistake(check, wrong):
    with pytest.raises(AssertionError):
        check(wrong)


def test_an_unwritten_exercise_runs_the_reference(capsys):
    def mine(*args):
        raise NotImplementedError
    assert s00.run_exercise(s00.check_ex2, mine, s00.ex2_critical_batch) is False
    assert "not attempted yet" in capsys.readouterr().out
