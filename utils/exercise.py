"""The checker-cell pattern shared by the notebooks' exercises.

A learner's function starts as `raise NotImplementedError`. The checker compares it with the course's
implementation on many random cases and raises AssertionError with the first failing case; until the learner
writes it, the checker runs the reference solution instead, so the notebook still runs top to bottom. The
tests run every reference solution through its checker.
"""
from __future__ import annotations


def run_exercise(check, fn, reference, source: str) -> bool:
    """True if the learner's `fn` passes `check`; False (after checking `reference`) if it is not written yet."""
    try:
        n = check(fn)
        print(f"your solution passes {n} random cases")
        return True
    except NotImplementedError:
        n = check(reference)
        print(f"not attempted yet (NotImplementedError); the reference solution passes {n} random cases ({source})")
        return False
