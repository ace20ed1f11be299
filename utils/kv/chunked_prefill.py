"""A token-budget scheduler, simulated on a request trace: chunked prefill (Sarathi-Serve, Agrawal et al.,
"Taming Throughput-Latency Tradeoff in LLM Inference with Sarathi-Serve", OSDI 2024) against the alternatives.

One engine step runs ONE forward pass over a batch that may mix decode tokens (1 per running request) and
prefill tokens. How a scheduler fills that batch decides the latencies:

  * "prefill_first"  (vLLM v0's default, and most servers before Sarathi): when requests wait, a step runs
    only their whole prefills; running decodes pause for that step -> a *generation stall* for every decode;
  * "whole"          (vLLM v1 with enable_chunked_prefill=False; Orca-style mixed batches): decodes first, then
    waiting prompts that fit the remaining budget in full; a prompt is never split, so one long prompt makes
    one long step and every decode in it waits for it;
  * "chunked"        (Sarathi-Serve, vLLM v1's default): decodes first, then prefill CHUNKS that fill the
    remaining `token_budget` (max_num_batched_tokens); a long prompt is spread over several steps, each step
    stays short, decodes keep flowing.

Time comes from a cost model of one step (seconds):

    t = overhead + per_token * tokens_in_step + per_attn * sum over prefill chunks of chunk * (context + chunk/2)

(fixed launch/scheduling cost + linear layers + attention of each chunk over everything before it); fit it to a
real engine's step times with `StepCost.fit`. The simulator is exact about WHICH tokens run in WHICH step; the
cost model only turns steps into seconds.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from .prefix_cache import check_prompt_fits

__all__ = ["SimRequest", "StepCost", "StepRecord", "SimResult", "simulate", "POLICIES", "latency_summary"]

POLICIES = ("chunked", "whole", "prefill_first")


@dataclass
class SimRequest:
    id: int
    arrival: float              # seconds
    prompt_len: int
    output_len: int
    # filled by the simulation
    prefilled: int = 0
    generated: int = 0
    token_times: list[float] = field(default_factory=list)

    @property
    def ttft(self) -> float:
        return self.token_times[0] - self.arrival if self.token_times else math.nan

    @property
    def itls(self) -> list[float]:
        t = self.token_times
        return [b - a for a, b in zip(t, t[1:])]


@dataclass
class StepCost:
    overhead: float = 4e-3       # s per step (host work, kernel launches)
    per_token: float = 2e-5      # s per token in the batch (linear layers; compute bound at large counts)
    per_attn: float = 0.0        # s per (query token x key token) of prefill attention

    def __call__(self, tokens: int, chunks: list[tuple[int, int]] = ()) -> float:
        attn = sum(c * (ctx + c / 2) for ctx, c in chunks)
        return self.overhead + self.per_token * tokens + self.per_attn * attn

    @classmethod
    def fit(cls, tokens, seconds, chunks=None) -> "StepCost":
        """Least-squares overhead + per_token from measured (tokens in step, step seconds) pairs; with `chunks`
        (per step, the prefill chunks as (context before, chunk tokens), e.g. from `step_chunks`) also per_attn,
        the quadratic cost of prefill attention that a long prompt's chunks pay. Terms that come out negative
        are dropped and the rest refitted."""
        x, y = np.asarray(tokens, float), np.asarray(seconds, float)
        if len(x) < 2 or np.ptp(x) == 0:
            raise ValueError("StepCost.fit needs steps of at least two different token counts")
        cols = {"overhead": np.ones_like(x), "per_token": x}
        if chunks is not None:
            if len(chunks) != len(x):
                raise ValueError(f"{len(chunks)} chunk lists for {len(x)} steps")
            cols["per_attn"] = np.array([sum(c * (ctx + c / 2) for ctx, c in ch) for ch in chunks], float)
        while True:
            names = list(cols)
            coef = np.linalg.lstsq(np.stack([cols[n] for n in names], 1), y, rcond=None)[0]
            negative = [n for n, v in zip(names, coef) if v < 0 and n != "overhead"]
            if not negative:
                return cls(**{n: max(float(v), 0.0) for n, v in zip(names, coef)})
            del cols[negative[0]]


@dataclass
class StepRecord:
    start: float
    duration: float
    decode_tokens: int
    prefill_tokens: int
    num_prefills: int

    @property
    def tokens(self) -> int:
        return self.decode_tokens + self.prefill_tokens


@dataclass
class SimResult:
    policy: str
    token_budget: int
    steps: list[StepRecord]
    requests: list[SimRequest]

    def step_tokens(self) -> np.ndarray:
        return np.array([s.tokens for s in self.steps])

    def ttfts(self, ids=None) -> np.ndarray:
        return np.array([r.ttft for r in self.requests if ids is None or r.id in ids])

    def itls(self, ids=None) -> np.ndarray:
        out = [x for r in self.requests if ids is None or r.id in ids for x in r.itls]
        return np.array(out)

    @property
    def makespan(self) -> float:
        return self.steps[-1].start + self.steps[-1].duration if self.steps else 0.0

    def throughput(self) -> float:
        """Tokens processed (prompt + generated) per simulated second."""
        total = sum(r.prompt_len + r.output_len for r in self.requests)
        return total / self.makespan if self.makespan else 0.0


def simulate(requests, *, policy: str = "chunked", token_budget: int = 512, max_num_seqs: int = 256,
             cost: StepCost | None = None, max_model_len: int | None = None) -> SimResult:
    """Run a trace (SimRequest or (arrival, prompt_len, output_len) tuples) through a one-engine scheduler.

    Each step: (1) running requests that finished their prefill decode one token each (decodes first, as in
    vLLM v1 and Sarathi-Serve; with prefill_first they pause while a prefill runs); (2) requests still in
    prefill and then waiting ones (FCFS) get prefill tokens from what is left of the budget -- a chunk of
    any size ("chunked"), all of the prompt or nothing ("whole"), or whole prompts alone ("prefill_first").
    A request's first token comes out of the step that computes its last prompt token.
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    if token_budget <= 0:
        raise ValueError(f"token_budget must be positive, got {token_budget}")
    cost = cost or StepCost()
    reqs = [r if isinstance(r, SimRequest) else SimRequest(i, float(r[0]), int(r[1]), int(r[2]))
            for i, r in enumerate(requests)]
    for r in reqs:
        if r.prompt_len <= 0 or r.output_len <= 0:
            raise ValueError(f"request {r.id}: prompt_len and output_len must be positive")
        check_prompt_fits(r.prompt_len + r.output_len, max_model_len, what=f"request {r.id} (prompt + output)")
        if policy != "chunked" and r.prompt_len > token_budget:
            raise ValueError(f"request {r.id} has a {r.prompt_len}-token prompt but the token budget is "
                             f"{token_budget} and policy {policy!r} never splits a prompt: it could never run. "
                             f"Raise token_budget to at least the longest prompt (vLLM requires "
                             f"max_num_batched_tokens >= max_model_len without chunked prefill) or chunk.")
        r.prefilled, r.generated, r.token_times = 0, 0, []
    pending = sorted(reqs, key=lambda r: (r.arrival, r.id))
    waiting: list[SimRequest] = []
    running: list[SimRequest] = []          # admitted, in prefill or in decode, admission order
    steps: list[StepRecord] = []
    now, k = 0.0, 0
    while k < len(pending) or waiting or running:
        while k < len(pending) and pending[k].arrival <= now:
            waiting.append(pending[k])
            k += 1
        if not waiting and not running:
            now = pending[k].arrival
            continue
        budget = token_budget
        decodes = [r for r in running if r.prefilled == r.prompt_len]
        prefilling = [r for r in running if r.prefilled < r.prompt_len]
        chunks: list[tuple[SimRequest, int]] = []
        if policy == "prefill_first" and waiting and len(running) < max_num_seqs \
                and waiting[0].prompt_len <= token_budget:
            decodes = []                     # a prefill step: the decodes wait for it
        budget -= len(decodes)
        for r in prefilling:                 # (only "chunked" leaves a prompt half done)
            c = min(r.prompt_len - r.prefilled, budget)
            if c > 0:
                chunks.append((r, c))
                budget -= c
        while waiting and len(running) < max_num_seqs and budget > 0:
            r = waiting[0]
            need = r.prompt_len
            if policy != "chunked" and need > budget:
                break
            c = min(need, budget)
            waiting.pop(0)
            running.append(r)
            chunks.append((r, c))
            budget -= c
        n_pf = sum(c for _, c in chunks)
        if not decodes and not chunks:      # nothing fits (cannot happen with the checks above)
            raise RuntimeError("scheduler made no progress")
        dt = cost(len(decodes) + n_pf, [(r.prefilled, c) for r, c in chunks])
        end = now + dt
        for r in decodes:
            r.generated += 1
            r.token_times.append(end)
        for r, c in chunks:
            r.prefilled += c
            if r.prefilled == r.prompt_len:  # last prompt token computed: first output token
                r.generated += 1
                r.token_times.append(end)
        running = [r for r in running if r.generated < r.output_len]
        steps.append(StepRecord(now, dt, len(decodes), n_pf, len(chunks)))
        now = end
    return SimResult(policy, token_budget, steps, reqs)


def latency_summary(res: SimResult, ids=None) -> dict:
    """TTFT and ITL percentiles (ms) of a simulation, like a benchmark client reports them."""
    tt, it = res.ttfts(ids) * 1e3, res.itls(ids) * 1e3
    pct = lambda a, q: float(np.percentile(a, q)) if len(a) else math.nan
    return {"policy": res.policy, "token_budget": res.token_budget, "steps": len(res.steps),
            "ttft_p50_ms": pct(tt, 50), "ttft_p99_ms": pct(tt, 99), "itl_p50_ms": pct(it, 50),
            "itl_p99_ms": pct(it, 99), "itl_max_ms": float(it.max()) if len(it) else math.nan,
            "makespan_s": res.makespan, "tokens_per_s": res.throughput()}


# ------------------------------------------------------------------------------------------------------------
# The same trace on a real vLLM engine. Needs the engine core in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0
# set before the LLM is built) so that its scheduler can be read and its token budget changed between runs.
def engine_scheduler(llm):
    """vLLM v1's Scheduler object inside an offline LLM, or a clear error when the engine core runs in another
    process (then its scheduler cannot be reached)."""
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    inner = getattr(core, "engine_core", None)
    sched = getattr(inner, "scheduler", None)
    if sched is None:
        raise RuntimeError("this LLM's engine core runs in a separate process, so its scheduler cannot be read. "
                           "Set os.environ['VLLM_ENABLE_V1_MULTIPROCESSING'] = '0' BEFORE building the LLM.")
    return sched


def set_token_budget(llm, token_budget: int, chunked: bool = True) -> dict:
    """Change a running engine's per-step token budget (max_num_batched_tokens) and the chunked-prefill switch
    in place, instead of restarting the engine for every value (a start costs tens of seconds).

    Safe only downwards: the model runner sized its buffers (and the memory profile) for the budget the engine
    was started with, so a larger value is refused. The scheduler reads both settings at every step
    (Scheduler.max_num_scheduled_tokens and scheduler_config.enable_chunked_prefill)."""
    sched = engine_scheduler(llm)
    started = getattr(sched, "_course_started_budget", None) or sched.max_num_scheduled_tokens
    sched._course_started_budget = started
    if token_budget > started:
        raise ValueError(f"token budget {token_budget} is above the {started} this engine was started with (its "
                         f"buffers are sized for that); start the engine with max_num_batched_tokens >= "
                         f"{token_budget}")
    max_len = sched.max_model_len
    if not chunked and token_budget < max_len:
        raise ValueError(f"without chunked prefill vLLM needs max_num_batched_tokens ({token_budget}) >= "
                         f"max_model_len ({max_len}), or a long prompt could never be scheduled")
    sched.max_num_scheduled_tokens = int(token_budget)
    sched.scheduler_config.enable_chunked_prefill = bool(chunked)
    return {"token_budget": int(token_budget), "chunked": bool(chunked), "started_budget": started}


class ScheduleRecorder:
    """Wraps the scheduler's schedule(): per step, the total tokens scheduled and, per request (by trace index
    for requests named "r<index>" by replay_on_engine; vLLM may append a suffix to the id), how many."""

    def __init__(self, llm):
        self.sched = engine_scheduler(llm)
        self.steps: list[dict] = []
        self._orig = None

    def __enter__(self):
        self._orig = self.sched.schedule
        orig = self._orig

        def schedule(*a, **k):
            out = orig(*a, **k)
            if out.total_num_scheduled_tokens:
                self.steps.append({"t": time.perf_counter(), "tokens": int(out.total_num_scheduled_tokens),
                                   "per_request": {_trace_index(k): v for k, v in out.num_scheduled_tokens.items()}})
            return out
        self.sched.schedule = schedule
        return self

    def __exit__(self, *exc):
        self.sched.schedule = self._orig
        return False


def _trace_index(request_id):
    head = str(request_id).split("-")[0]
    return int(head[1:]) if head.startswith("r") and head[1:].isdigit() else request_id


def replay_on_engine(llm, trace, *, max_model_len: int | None = None, record_schedule: bool = True) -> dict:
    """Replay `trace` [(arrival_s, prompt_token_ids, output_len), ...] on an offline vLLM engine in real time:
    requests are added when their arrival time has passed, the engine is stepped, and every output token's
    arrival is timed. Returns per-request TTFT / token times and, with record_schedule, the tokens the
    scheduler put in each step."""
    from vllm import SamplingParams
    engine = llm.llm_engine
    for i, (_, ids, out_len) in enumerate(trace):
        check_prompt_fits(len(ids) + out_len, max_model_len, what=f"request {i} (prompt + output)")
    order = sorted(range(len(trace)), key=lambda i: trace[i][0])
    sent, first, times, n_seen = {}, {}, {i: [] for i in range(len(trace))}, {}
    rec = ScheduleRecorder(llm) if record_schedule else None
    ctx = rec if rec is not None else _Null()
    with ctx:
        t0 = time.perf_counter()
        k = 0
        while k < len(order) or engine.has_unfinished_requests():
            now = time.perf_counter() - t0
            while k < len(order) and trace[order[k]][0] <= now:
                i = order[k]
                sp = SamplingParams(max_tokens=int(trace[i][2]), temperature=0.0, ignore_eos=True)
                engine.add_request(f"r{i}", {"prompt_token_ids": list(trace[i][1])}, sp)
                sent[i] = time.perf_counter() - t0
                k += 1
            if not engine.has_unfinished_requests():
                time.sleep(max(0.0, trace[order[k]][0] - (time.perf_counter() - t0)))
                continue
            outs = engine.step()
            t = time.perf_counter() - t0
            for o in outs:
                i = _trace_index(o.request_id)
                n = len(o.outputs[0].token_ids)
                times[i] += [t] * (n - n_seen.get(i, 0))
                n_seen[i] = n
        total = time.perf_counter() - t0
    reqs = []
    for i, (arr, ids, out_len) in enumerate(trace):
        tt = times[i]
        reqs.append({"id": i, "prompt_len": len(ids), "output_len": out_len, "sent": sent[i],
                     "ttft": tt[0] - sent[i] if tt else math.nan,
                     "itls": [b - a for a, b in zip(tt, tt[1:])], "tokens": len(tt)})
    steps = []
    if rec is not None:
        steps = [{"t": s["t"] - t0 - 0.0, "tokens": s["tokens"], "per_request": s["per_request"]} for s in rec.steps]
    return {"requests": reqs, "steps": steps, "duration_s": total,
            "tokens": sum(len(ids) + o for _, ids, o in trace)}


def step_chunks(run: dict) -> list[list[tuple[int, int]]]:
    """Per recorded step of `replay_on_engine`, the prefill chunks it ran as (tokens of that prompt already
    computed, chunk tokens): what `StepCost` charges attention for. Decode tokens are not chunks."""
    prompt_len = {r["id"]: r["prompt_len"] for r in run["requests"]}
    done: dict = {}
    out = []
    for st in run["steps"]:
        chunks = []
        for i, n in st["per_request"].items():
            before = done.get(i, 0)
            if i in prompt_len and before < prompt_len[i]:
                chunks.append((before, min(n, prompt_len[i] - before)))
            done[i] = before + n
        out.append(chunks)
    return out


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def engine_summary(run: dict, decode_ids=None, long_ids=None) -> dict:
    """ITL percentiles over the steady decodes, TTFT of the long prompts, throughput, largest step (tokens)."""
    reqs = run["requests"]
    itl = np.array([x for r in reqs if decode_ids is None or r["id"] in decode_ids for x in r["itls"]]) * 1e3
    tt = np.array([r["ttft"] for r in reqs if long_ids is None or r["id"] in long_ids]) * 1e3
    pct = lambda a, q: float(np.percentile(a, q)) if len(a) else math.nan
    return {"itl_p50_ms": pct(itl, 50), "itl_p99_ms": pct(itl, 99), "itl_max_ms": float(itl.max()) if len(itl) else math.nan,
            "long_ttft_p50_ms": pct(tt, 50), "long_ttft_max_ms": float(tt.max()) if len(tt) else math.nan,
            "tokens_per_s": run["tokens"] / run["duration_s"], "duration_s": run["duration_s"],
            "max_step_tokens": max((s["tokens"] for s in run["steps"]), default=0), "steps": len(run["steps"])}
