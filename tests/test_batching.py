"""Static waves vs continuous batching, in decoding steps (utils/serving/batching.py)."""
import random

import pytest

from utils.serving.batching import continuous_steps, ideal_continuous_steps, static_wave_steps


def brute_force_continuous(outputs, batch):
    """Step by step: every running request makes one token per step; freed slots are refilled at the next step."""
    waiting, running, step = list(outputs), [], 0
    while waiting or running:
        while waiting and len(running) < batch:
            running.append(waiting.pop(0))
        step += 1
        running = [n - 1 for n in running if n > 1]
    return step


def test_hand_worked_example():
    # 2 slots: waves (8, 2), (2, 2), (8) -> 8 + 2 + 8 = 18 steps. Continuous: slot A runs the first 8 (steps 0-8),
    # slot B the three 2s (0-6), then the last 8 (6-14); A idles from 8 to 14: the drain tail. sum/2 = 11 ignores it
    outs = [8, 2, 2, 2, 8]
    assert static_wave_steps(outs, 2) == 18
    assert continuous_steps(outs, 2) == 14
    assert ideal_continuous_steps(outs, 2) == 11


@pytest.mark.parametrize("seed", range(20))
def test_simulation_matches_step_by_step_and_bounds(seed):
    r = random.Random(seed)
    outs = [r.choice([r.randint(1, 8), r.randint(50, 120)]) for _ in range(r.randint(1, 40))]
    b = r.randint(1, 12)
    cont = continuous_steps(outs, b)
    assert cont == brute_force_continuous(outs, b)
    assert max(outs) <= cont <= static_wave_steps(outs, b)    # never worse than waves, never shorter than the longest
    assert cont >= ideal_continuous_steps(outs, b)              # the drain tail only adds steps
    assert continuous_steps(outs, 1) == static_wave_steps(outs, 1) == sum(outs)


def test_bad_input():
    with pytest.raises(ValueError, match="batch"):
        continuous_steps([3], 0)
    with pytest.raises(ValueError, match="at least one token"):
        static_wave_steps([3, 0], 2)
