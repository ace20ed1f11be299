"""How many decoding steps a set of requests needs under static batching and under continuous batching.

A request that asks for n tokens holds a slot for n engine steps (its prefill step yields the first token).
* static waves: the client sends `batch` requests and waits for all of them; a wave lasts as long as its longest
  request, so the waves need sum(max(wave)) steps.
* continuous batching (Orca, Yu et al. OSDI 2022; vLLM's scheduler): `batch` slots; when a request finishes, the next
  waiting one takes its slot at the next step. Simulated slot by slot, in arrival order.
`sum(n) / batch` is the continuous-batching count if every slot stayed busy to the end; it ignores the drain tail
(the last steps, when fewer than `batch` requests are left), so it overstates the gain of continuous batching.
"""
from __future__ import annotations

import heapq
import math
from collections.abc import Sequence


def _check(outputs: Sequence[int], batch: int) -> None:
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if any(n < 1 for n in outputs):
        raise ValueError("every request must ask for at least one token")


def static_wave_steps(outputs: Sequence[int], batch: int) -> int:
    """Steps for waves of `batch` requests in arrival order, each wave waiting for its longest request."""
    _check(outputs, batch)
    return sum(max(outputs[i:i + batch]) for i in range(0, len(outputs), batch))


def continuous_steps(outputs: Sequence[int], batch: int) -> int:
    """Steps until the last request finishes when a freed slot is refilled at the next step (FIFO admission)."""
    _check(outputs, batch)
    free_at = [0] * min(batch, len(outputs))          # the step at which each slot is free again
    heapq.heapify(free_at)
    end = 0
    for n in outputs:
        start = heapq.heappop(free_at)
        end = max(end, start + n)
        heapq.heappush(free_at, start + n)
    return end


def ideal_continuous_steps(outputs: Sequence[int], batch: int) -> int:
    """sum(n) / batch, rounded up: every slot busy until the end (no drain tail). A lower bound."""
    _check(outputs, batch)
    return math.ceil(sum(outputs) / batch)
