"""A streaming benchmark client for any OpenAI-compatible server (vLLM, SGLang, TensorRT-LLM, ...).

Only the base URL and the model name change between servers. Each request is streamed
(`stream=True`, `stream_options={"include_usage": True}`) so that every token's arrival can be timed.

The metrics are defined exactly as vLLM's own benchmark (`vllm bench serve`) defines them, so numbers from
here and from vLLM's tool can be compared. Source: vllm/benchmarks/lib/endpoint_request_func.py
(per-request timing) and vllm/benchmarks/serve.py `calculate_metrics` (aggregation):

  * TTFT    time from sending the request to the first streamed chunk that carries a choice
            (for chat, vLLM's first chunk is the role delta, sent with the first token).
  * ITL     inter-token latency: the gaps between consecutive choice chunks (one list per request, all
            requests pooled for the percentiles). A chunk can carry more than one token.
  * E2EL    end-to-end latency: send -> last choice chunk (the trailing usage chunk does not count).
  * TPOT    time per output token *per request*: (E2EL - TTFT) / (output_tokens - 1), only for requests with
            more than one output token; output_tokens comes from the server's `usage.completion_tokens`.
  * request throughput = completed requests / benchmark duration; output token throughput = generated
            tokens / duration; total token throughput = (prompt + generated tokens) / duration.
            The duration runs from the first request sent (after warm-up) to the last one finished.
  * goodput = requests that meet *every* given SLO (ttft, tpot, e2el in ms; a request with <= 1 output
            token counts as tpot = 0) / duration (DistServe, Zhong et al. 2024, as in vLLM).
  * percentiles: numpy's linear interpolation, in milliseconds.

Arrivals: a fixed concurrency (a semaphore, `max_concurrency` in vLLM) and/or a request rate: gaps drawn
from a gamma distribution with shape = burstiness (1.0 = Poisson process) and mean 1/rate, rescaled so that
the n requests span exactly n / rate seconds -- vLLM's `get_request`. Seeded: the same seed gives the same
arrival times.
"""
from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass, field

DEFAULT_PERCENTILES = (50, 90, 99)


# ------------------------------------------------------------------------------------ one request
@dataclass
class RequestResult:
    """The timing of one streamed request. Times are seconds; *_at are offsets from the run's start."""
    id: int
    success: bool = False
    error: str = ""
    prompt_len: int = 0                 # usage.prompt_tokens when reported, else the workload's count
    output_len_requested: int = 0
    output_tokens: int = 0              # usage.completion_tokens (see count fallback in _finish)
    sent_at_s: float = 0.0              # when the request went out
    queued_s: float = 0.0               # time it waited for a client concurrency slot before being sent
    ttft_s: float = 0.0
    latency_s: float = 0.0              # E2EL
    itl_s: list[float] = field(default_factory=list, repr=False)
    chunk_at_s: list[float] = field(default_factory=list, repr=False)   # arrival offsets of choice chunks
    text: str = field(default="", repr=False)

    @property
    def tpot_s(self) -> float:
        """vLLM's TPOT: (latency - ttft) / (output_tokens - 1); NaN when output_tokens <= 1."""
        return (self.latency_s - self.ttft_s) / (self.output_tokens - 1) if self.output_tokens > 1 else math.nan

    @property
    def first_token_at_s(self) -> float:
        return self.sent_at_s + self.ttft_s

    @property
    def finished_at_s(self) -> float:
        return self.sent_at_s + self.latency_s


def build_payload(request, model: str, api: str, ignore_eos: bool = True, extra_body: dict | None = None,
                  temperature: float = 0.0) -> tuple[str, dict]:
    """(path, JSON body) of one streamed request, as vLLM's benchmark sends it.

    api="completions" sends the chat-templated `prompt` text; api="chat" sends `messages` and lets the
    server apply its chat template. ignore_eos (a vLLM/SGLang extension; servers that do not know it ignore
    it or reject it -- then pass ignore_eos=False) makes every request produce exactly output_len tokens.
    """
    if api == "completions":
        path = "/v1/completions"
        body = {"model": model, "prompt": request.prompt, "max_tokens": request.output_len}
    elif api == "chat":
        path = "/v1/chat/completions"
        body = {"model": model, "messages": request.messages, "max_completion_tokens": request.output_len,
                "max_tokens": request.output_len}     # older servers only know max_tokens
    else:
        raise ValueError(f"api must be 'completions' or 'chat', not {api!r}")
    body.update(temperature=temperature, stream=True, stream_options={"include_usage": True})
    if ignore_eos:
        body["ignore_eos"] = True
    if extra_body:
        body.update(extra_body)
    return path, body


def parse_sse_line(line: str):
    """One line of a server-sent event stream -> the JSON object, "[DONE]", or None (blank/comment)."""
    line = line.strip()
    if not line or line.startswith(":") or not line.startswith("data:"):
        return None
    data = line[len("data:"):].strip()
    if data == "[DONE]":
        return data
    return json.loads(data)


async def _sse_lines(resp):
    """The lines of a streamed HTTP body, as they arrive (chunks are split on newlines, partial lines kept)."""
    buf = b""
    async for piece in resp.content.iter_any():
        buf += piece
        *lines, buf = buf.split(b"\n")
        for line in lines:
            yield line.decode("utf-8", errors="replace")
    if buf:
        yield buf.decode("utf-8", errors="replace")


async def stream_request(session, base_url: str, model: str, request, *, api: str = "completions",
                         ignore_eos: bool = True, extra_body: dict | None = None, run_t0: float | None = None,
                         tokenizer=None) -> RequestResult:
    """Send one streamed request on an aiohttp session and time every chunk (vLLM's async_request_openai_*).

    aiohttp, as in `vllm bench serve`: httpx's pool raised intermittent ReadErrors at a few hundred
    concurrent streams (encode/httpx#3348), which a benchmark would misreport as server failures."""
    path, body = build_payload(request, model, api, ignore_eos, extra_body)
    res = RequestResult(id=request.id, prompt_len=request.prompt_len, output_len_requested=request.output_len)
    st = time.perf_counter()
    res.sent_at_s = st - (run_t0 if run_t0 is not None else st)
    last = st
    first = False
    text: list[str] = []
    try:
        async with session.post(base_url.rstrip("/") + path, json=body) as resp:
            if resp.status != 200:
                detail = (await resp.read()).decode(errors="replace")[:500]
                res.error = f"HTTP {resp.status}: {detail}"
                return res
            async for line in _sse_lines(resp):
                data = parse_sse_line(line)
                if data is None or data == "[DONE]":
                    continue
                now = time.perf_counter()
                if usage := data.get("usage"):      # vLLM: a chunk of its own; llama.cpp, transformers: the last choice chunk
                    res.output_tokens = usage.get("completion_tokens") or 0
                    if usage.get("prompt_tokens") is not None:
                        res.prompt_len = usage["prompt_tokens"]
                if choices := data.get("choices"):
                    c = choices[0]
                    piece = c.get("text") if api == "completions" else (c.get("delta") or {}).get("content")
                    if not piece and c.get("finish_reason") and first:
                        continue                    # a closing chunk with no text carries no token: not timed
                    if not first:
                        first = True
                        res.ttft_s = now - st
                    else:
                        res.itl_s.append(now - last)
                    res.chunk_at_s.append(now - st)
                    last = now
                    text.append(piece or "")
        res.text = "".join(text)
        res.latency_s = last - st
        if first:
            res.success = True
            if not res.output_tokens:   # server sent no usage: count tokens like vLLM does (or chunks)
                res.output_tokens = (len(tokenizer.encode(res.text, add_special_tokens=False)) if tokenizer
                                     else len(res.chunk_at_s))
        else:
            res.error = "Never received a valid chunk to calculate TTFT."
    except Exception as e:   # noqa: BLE001 -- a failed request is a result, not a crash of the run
        res.error = f"{type(e).__name__}: {e}"
    return res


# ------------------------------------------------------------------------------------- arrivals
def arrival_times(n: int, request_rate: float = math.inf, burstiness: float = 1.0, seed: int = 0) -> list[float]:
    """Send offsets (s) of n requests, as vLLM's get_request computes them.

    rate = inf: all at t = 0 (then only the concurrency limit paces them). Otherwise gamma(shape=burstiness,
    scale=1/(rate*burstiness)) gaps (burstiness 1 = Poisson), cumulated and rescaled to span n / rate s.
    """
    if n <= 0:
        return []
    if request_rate == math.inf:
        return [0.0] * n
    if request_rate <= 0:
        raise ValueError("request_rate must be > 0 (or math.inf)")
    import numpy as np
    rng = np.random.default_rng(seed)
    if burstiness == math.inf:
        gaps = np.full(n, 1.0 / request_rate)
    else:
        gaps = rng.gamma(shape=burstiness, scale=1.0 / (request_rate * burstiness), size=n)
    t = np.cumsum(gaps)
    t *= (n / request_rate) / t[-1]
    return t.tolist()


# ------------------------------------------------------------------------------------------- a run
@dataclass
class BenchmarkResult:
    """Everything one run measured: per-request results, the duration, and vLLM-style metrics."""
    results: list[RequestResult]
    duration_s: float
    config: dict
    slo_ms: dict | None = None
    percentiles: tuple = DEFAULT_PERCENTILES

    @property
    def metrics(self) -> dict:
        return compute_metrics(self.results, self.duration_s, self.slo_ms, self.percentiles)

    def requests_df(self):
        """One row per request: send / first token / finish times (s from the run's start), latencies (ms)."""
        import pandas as pd
        rows = [{"id": r.id, "success": r.success, "prompt_len": r.prompt_len,
                 "output_len_requested": r.output_len_requested, "output_tokens": r.output_tokens,
                 "sent_at_s": r.sent_at_s, "first_token_at_s": r.first_token_at_s, "finished_at_s": r.finished_at_s,
                 "queued_ms": r.queued_s * 1e3, "ttft_ms": r.ttft_s * 1e3, "tpot_ms": r.tpot_s * 1e3,
                 "e2el_ms": r.latency_s * 1e3, "chunks": len(r.chunk_at_s), "error": r.error}
                for r in self.results]
        return pd.DataFrame(rows)

    def summary(self) -> dict:
        """Config + metrics in one flat dict (a row of a sweep table)."""
        return {**self.config, **self.metrics}


def compute_metrics(results: list[RequestResult], duration_s: float, slo_ms: dict | None = None,
                    percentiles=DEFAULT_PERCENTILES) -> dict:
    """vLLM's calculate_metrics: throughputs, goodput and mean/median/std/percentiles of TTFT, TPOT, ITL, E2EL.

    slo_ms: e.g. {"ttft": 500, "tpot": 50, "e2el": 5000}; any subset. Keys of the result follow vLLM's
    BenchmarkMetrics names (request_throughput, output_throughput, mean_ttft_ms, p99_itl_ms, ...).
    """
    import numpy as np
    ok = [r for r in results if r.success]
    ttfts = [r.ttft_s for r in ok]
    e2els = [r.latency_s for r in ok]
    tpots = [r.tpot_s for r in ok if r.output_tokens > 1]
    itls = [x for r in ok for x in r.itl_s]
    total_in = sum(r.prompt_len for r in ok)
    total_out = sum(r.output_tokens for r in ok)
    m = {"completed": len(ok), "failed": len(results) - len(ok), "duration_s": duration_s,
         "total_input_tokens": total_in, "total_output_tokens": total_out,
         "request_throughput": len(ok) / duration_s if duration_s > 0 else math.nan,
         "output_throughput": total_out / duration_s if duration_s > 0 else math.nan,
         "total_token_throughput": (total_in + total_out) / duration_s if duration_s > 0 else math.nan}
    if slo_ms:
        unknown = set(slo_ms) - {"ttft", "tpot", "e2el"}
        if unknown:
            raise ValueError(f"unknown SLO keys {sorted(unknown)}: use ttft, tpot, e2el (milliseconds)")
        good = 0
        for r in ok:
            vals = {"ttft": r.ttft_s, "tpot": r.tpot_s if r.output_tokens > 1 else 0.0, "e2el": r.latency_s}
            good += all(vals[k] <= v / 1e3 for k, v in slo_ms.items())
        m["good_requests"] = good
        m["request_goodput"] = good / duration_s if duration_s > 0 else math.nan
        m["goodput_fraction"] = good / len(results) if results else math.nan
    for name, xs in (("ttft", ttfts), ("tpot", tpots), ("itl", itls), ("e2el", e2els)):
        arr = np.asarray(xs or [0.0]) * 1e3        # vLLM reports 0 for an empty list
        m[f"mean_{name}_ms"] = float(arr.mean())
        m[f"median_{name}_ms"] = float(np.median(arr))
        m[f"std_{name}_ms"] = float(arr.std())
        for p in percentiles:
            m[f"p{p:g}_{name}_ms"] = float(np.percentile(arr, p))
    return m


async def run_benchmark_async(base_url: str, model: str, requests: list, *, concurrency: int | None = None,
                              request_rate: float = math.inf, burstiness: float = 1.0, seed: int = 0,
                              warmup: int = 2, api: str = "completions", ignore_eos: bool = True,
                              extra_body: dict | None = None, timeout_s: float = 300.0,
                              max_seconds: float | None = None, slo_ms: dict | None = None,
                              percentiles=DEFAULT_PERCENTILES, tokenizer=None,
                              progress: bool = False, force_close: bool = False) -> BenchmarkResult:
    """Run `requests` against the server; see `run_benchmark` (the synchronous entry point)."""
    import aiohttp
    if not requests:
        raise ValueError("no requests to send")
    if concurrency is not None and concurrency < 1:
        raise ValueError("concurrency must be >= 1 (or None for unlimited)")
    slots = concurrency or len(requests)
    kw = dict(api=api, ignore_eos=ignore_eos, extra_body=extra_body, tokenizer=tokenizer)
    # force_close: a new connection per request. llama.cpp's server closes the connection after each streamed
    # response although it announces keep-alive; a pooled connection then fails the next request at random.
    connector = (aiohttp.TCPConnector(limit=slots + 4, force_close=True) if force_close else
                 aiohttp.TCPConnector(limit=slots + 4, keepalive_timeout=60))
    timeout = aiohttp.ClientTimeout(total=timeout_s, connect=10.0)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False) as client:
        if warmup:   # like vLLM: copies of the first request, at the same concurrency, not measured
            sem_w = asyncio.Semaphore(slots)

            async def warm():
                async with sem_w:
                    return await stream_request(client, base_url, model, requests[0], **kw)
            warm_results = await asyncio.gather(*[warm() for _ in range(warmup)])
            bad = [w for w in warm_results if not w.success]
            if bad:
                raise RuntimeError(f"warm-up request failed against {base_url} (model {model!r}): {bad[0].error}")

        offsets = arrival_times(len(requests), request_rate, burstiness, seed)
        # The sending loop itself takes a concurrency slot before creating each request's task (the task
        # gives it back when done), so `max_seconds` can stop the loop while requests wait for slots.
        sem = asyncio.Semaphore(concurrency) if concurrency else None
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=len(requests), desc=f"c={concurrency} rate={request_rate:g}", leave=False)
        t0 = time.perf_counter()

        async def one(req, arrival):
            try:
                r = await stream_request(client, base_url, model, req, run_t0=t0, **kw)
            finally:
                if sem is not None:
                    sem.release()
            r.queued_s = max(0.0, r.sent_at_s - arrival)    # waited for a slot (vLLM: client_queue_time)
            if bar is not None:
                bar.update(1)
            return r

        tasks = []
        for req, off in zip(requests, offsets):
            delay = t0 + off - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if sem is not None:
                await sem.acquire()
            if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
                if sem is not None:
                    sem.release()
                break                                    # bounded in time: stop sending new requests
            tasks.append(asyncio.create_task(one(req, off)))
        results = list(await asyncio.gather(*tasks))
        duration = time.perf_counter() - t0
        if bar is not None:
            bar.close()
    if results and not any(r.success for r in results):
        raise RuntimeError(f"all {len(results)} requests failed against {base_url} (model {model!r}); "
                           f"the first error: {results[0].error}")
    config = {"concurrency": concurrency, "request_rate": request_rate, "burstiness": burstiness,
              "num_requests": len(results), "api": api}
    return BenchmarkResult(results, duration, config, slo_ms, tuple(percentiles))


def run_sync(coro):
    """Run a coroutine to completion from plain code *or* from a notebook cell (whose loop is running)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    import concurrent.futures
    with concurrent.futures.ThreadPoolExecutor(1) as ex:   # a fresh loop in a helper thread
        return ex.submit(asyncio.run, coro).result()


def run_benchmark(base_url: str, model: str, requests: list, **kwargs) -> BenchmarkResult:
    """Stream `requests` to an OpenAI-compatible server and measure them.

    base_url: e.g. "http://127.0.0.1:8000" (no /v1). model: the served model name.
    concurrency: max requests in flight (None = unlimited); request_rate: requests/s (math.inf = all at
    once), Poisson (burstiness=1) or gamma arrivals, seeded by `seed`; warmup: untimed requests first;
    api: "completions" or "chat"; ignore_eos: produce exactly output_len tokens; max_seconds: stop
    *sending* after this long (requests in flight finish); slo_ms: {"ttft", "tpot", "e2el"} for goodput;
    force_close: a new connection per request (for servers that close after each stream, e.g. llama.cpp).
    Returns a BenchmarkResult (.metrics dict, .requests_df(), .summary()).
    """
    return run_sync(run_benchmark_async(base_url, model, requests, **kwargs))
