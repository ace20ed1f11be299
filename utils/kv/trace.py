"""Replay a request trace through KV-cache allocators and measure how much reserved memory holds real KV.

A trace is a list of requests (arrival step, prompt tokens, output tokens). The simulator runs a simple
continuous-batching server, one decode step per time unit:
  1. admit waiting requests first-come-first-served while the allocator can hold them;
  2. every running request appends one token; finished requests free their memory.

Allocators (the strategies of the PagedAttention paper, Kwon et al., SOSP 2023, Fig. 2/3):
  * "contiguous-max":    reserve max_model_len slots per request (Orca (Max); FasterTransformer-style)
  * "contiguous-pow2":   reserve the next power of two >= prompt + output (Orca (Pow2); knows the output!)
  * "contiguous-oracle": reserve exactly prompt + output (Orca (Oracle); impossible in practice)
  * "paged":             blocks of `block_size` slots allocated on demand (vLLM)
Contiguous reservations live in one linear address space with first-fit placement, so holes between
them (external fragmentation) are real: a request waits if no single hole is big enough.
The paged admission keeps `watermark` (1%) of the blocks free for running requests to grow into, like vLLM;
when the pool still runs out mid-decode, the newest running request is preempted (its blocks freed, it is
re-queued and recomputed later), as vLLM does by default.

Waste is measured, not assumed: at every step we record reserved slots and slots that hold a token's KV.
waste % = 1 - sum_t used(t) / sum_t reserved(t)   (time-averaged over the whole replay).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path

from ..workload import Request, load_sharegpt


# ------------------------------------------------------------------------------------------ traces
def synthetic_trace(n: int = 500, *, seed: int = 0, rate: float = 2.0, max_model_len: int = 2048,
                    prompt_mean: float = 161.0, output_mean: float = 338.0, sigma: float = 1.0) -> list[Request]:
    """ShareGPT-like synthetic trace (documented so anyone can regenerate it).

    * prompt and output lengths: independent log-normals with log-sd `sigma` and the given *means*
      (defaults = ShareGPT means reported in the PagedAttention paper, Table 1: input 161.31, output 337.99);
      each at least 1 token, and prompt + output clipped to `max_model_len`;
    * arrivals: Poisson process with `rate` requests per decode step (exponential gaps);
    * `random.Random(seed)`: the same seed gives the same trace on every machine.
    """
    rng = random.Random(seed)
    mu_p = math.log(prompt_mean) - sigma ** 2 / 2          # mean of a log-normal = exp(mu + sigma^2 / 2)
    mu_o = math.log(output_mean) - sigma ** 2 / 2
    t, out = 0.0, []
    for _ in range(n):
        t += rng.expovariate(rate)
        p = max(1, min(max_model_len - 1, round(rng.lognormvariate(mu_p, sigma))))
        o = max(1, min(max_model_len - p, round(rng.lognormvariate(mu_o, sigma))))
        out.append(Request(prompt_len=p, output_len=o, arrival=int(t), id=len(out)))
    return out


def sharegpt_trace(path: str | Path, tokenizer, n: int = 500, *, seed: int = 0, rate: float = 2.0,
                   max_model_len: int = 2048) -> list[Request]:
    """A trace from a ShareGPT-style JSON file: the same requests `utils.workload.load_sharegpt` reads (vLLM's
    rules), given Poisson arrivals like synthetic_trace."""
    reqs = load_sharegpt(path, tokenizer, n=n, seed=seed, max_prompt_len=max_model_len - 1,
                         max_total_len=max_model_len)
    rng, t = random.Random(seed), 0.0
    for r in reqs:
        t += rng.expovariate(rate)
        r.arrival = int(t)
    return reqs


# ---------------------------------------------------------------------------------- allocators
class _FirstFit:
    """A linear address space of `capacity` slots with first-fit placement of contiguous regions."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.regions: dict[int, tuple[int, int]] = {}    # request id -> (start, size)

    def alloc(self, rid: int, size: int) -> bool:
        start = 0
        for s, sz in sorted(self.regions.values()):
            if s - start >= size:
                break
            start = s + sz
        if start + size > self.capacity:
            return False
        self.regions[rid] = (start, size)
        return True

    def free(self, rid: int) -> None:
        del self.regions[rid]

    def reserved(self) -> int:
        return sum(sz for _, sz in self.regions.values())


@dataclass
class ReplayResult:
    """Per-step series and totals of one replay."""
    policy: str
    block_size: int | None
    capacity: int
    steps: list[int] = field(default_factory=list)
    reserved: list[int] = field(default_factory=list)      # slots held by running requests
    used: list[int] = field(default_factory=list)          # slots that hold KV of a token
    will_use: list[int] = field(default_factory=list)      # reserved slots a future token of the request will fill
    running: list[int] = field(default_factory=list)       # batch size
    queued: list[int] = field(default_factory=list)        # requests arrived but not admitted
    tokens_out: int = 0
    preemptions: int = 0
    preempted_ids: list[int] = field(default_factory=list)  # victims in order (trace indices)

    @property
    def waste_pct(self) -> float:
        return 100 * (1 - sum(self.used) / max(1, sum(self.reserved)))

    @property
    def reserved_for_future_pct(self) -> float:
        """Waste that is only early: slots that a later token of the same request will fill."""
        return 100 * sum(self.will_use) / max(1, sum(self.reserved))

    @property
    def never_used_pct(self) -> float:
        """Waste that stays waste: over-reservation (contiguous) or the last block's empty tail (paged)."""
        return self.waste_pct - self.reserved_for_future_pct

    @property
    def pool_used_pct(self) -> float:
        """Share of the whole pool that holds KV (time-averaged): what the paper's Fig. 2 reports as token
        states. The rest is waste inside reservations plus free memory nobody could use (external
        fragmentation, or a queue head that does not fit). Averaged over the steps where requests were
        waiting (the pool was the bottleneck); the draining tail is left out."""
        busy = [u for u, q in zip(self.used, self.queued) if q > 0]   # saturated steps only
        return 100 * sum(busy) / max(1, self.capacity * len(busy))

    @property
    def mean_batch(self) -> float:
        return sum(self.running) / max(1, len(self.running))

    @property
    def tokens_per_step(self) -> float:
        return self.tokens_out / max(1, len(self.steps))

    def summary(self) -> dict:
        return {"policy": self.policy, "block_size": self.block_size, "waste_%": self.waste_pct,
                "reserved_not_yet_used_%": self.reserved_for_future_pct, "never_used_%": self.never_used_pct,
                "pool_holding_kv_%": self.pool_used_pct, "mean_batch": self.mean_batch, "tokens_per_step": self.tokens_per_step,
                "steps": len(self.steps), "preemptions": self.preemptions}


def _reservation(policy: str, r_len: int, max_model_len: int) -> int:
    if policy == "contiguous-max":
        return max_model_len
    if policy == "contiguous-pow2":
        return min(max_model_len, 1 << (r_len - 1).bit_length())
    if policy == "contiguous-oracle":
        return r_len
    raise ValueError(f"unknown policy {policy!r}; use contiguous-max/-pow2/-oracle or paged")


def replay(trace: list[Request], policy: str, capacity: int, *, block_size: int = 16,
           max_model_len: int = 2048, max_batch: int = 256, watermark: float = 0.01,
           max_steps: int = 1_000_000) -> ReplayResult:
    """Run `trace` through one allocator with a KV pool of `capacity` token slots; see the module docstring."""
    paged = policy == "paged"
    res = ReplayResult(policy, block_size if paged else None, capacity)
    pending = sorted(range(len(trace)), key=lambda i: trace[i].arrival)
    waiting: list[int] = []
    # running: id -> [tokens stored, final length, reserved slots (contiguous) or blocks (paged)]
    running: dict[int, list[int]] = {}
    restart: dict[int, int] = {}                    # tokens already generated before a preemption
    if not paged and capacity < max_model_len:
        raise ValueError(f"capacity {capacity} < max_model_len {max_model_len}: a max-length request never fits")
    num_blocks = capacity // block_size if paged else 0
    free_blocks = num_blocks
    space = None if paged else _FirstFit(capacity)
    step, nxt, done = 0, 0, 0
    while done < len(trace) and step < max_steps:
        while nxt < len(pending) and trace[pending[nxt]].arrival <= step:
            waiting.append(pending[nxt])
            nxt += 1
        # 1. admit FCFS (stop at the first request that does not fit: no overtaking)
        while waiting and len(running) < max_batch:
            rid = waiting[0]
            req = trace[rid]
            stored = req.prompt_len + restart.get(rid, 0)
            if paged:
                need = -(-(stored + 1) // block_size)     # prompt (+ recomputed tokens) and the first new token
                if need > free_blocks - watermark * num_blocks:   # keep a few blocks for running requests to grow
                    break
                free_blocks -= need
                running[rid] = [stored, req.total_len, need]
            else:
                size = _reservation(policy, req.total_len, max_model_len)
                if not space.alloc(rid, size):
                    break
                running[rid] = [stored, req.total_len, size]
            waiting.pop(0)
        # 2. one decode step: every running request stores one more token
        for rid in list(running):
            st = running.get(rid)
            if st is None:                                   # preempted earlier in this step
                continue
            if paged and st[0] + 1 > st[2] * block_size:
                if free_blocks == 0:                          # out of blocks: preempt the newest request
                    victim = max(running, key=lambda r: (trace[r].arrival, r))
                    v = running.pop(victim)
                    free_blocks += v[2]
                    restart[victim] = v[0] - trace[victim].prompt_len
                    waiting.insert(0, victim)
                    res.preemptions += 1
                    res.preempted_ids.append(victim)
                    if victim == rid:
                        continue
                free_blocks -= 1
                st[2] += 1
            st[0] += 1
            res.tokens_out += 1
        # record after the step, before freeing, so that finished requests count their last token
        reserved = sum(s[2] * block_size if paged else s[2] for s in running.values())
        used = sum(s[0] for s in running.values())
        will = sum(min(s[1], s[2] * block_size if paged else s[2]) - s[0] for s in running.values())
        res.steps.append(step)
        res.reserved.append(reserved)
        res.used.append(used)
        res.will_use.append(will)
        res.running.append(len(running))
        res.queued.append(len(waiting))
        for rid in [r for r, s in running.items() if s[0] >= s[1]]:
            s = running.pop(rid)
            done += 1
            if paged:
                free_blocks += s[2]
            else:
                space.free(rid)
        step += 1
    if done < len(trace):
        raise RuntimeError(f"replay stopped after {max_steps} steps with {len(trace) - done} requests unfinished")
    return res
