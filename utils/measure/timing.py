"""Timing that can be trusted: synchronise the device, warm up, repeat, report the spread.

GPU work is asynchronous: a host clock read without `torch.cuda.synchronize()` measures the launch,
not the work. Every timer here synchronises before reading the clock.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable


def synchronize(device: str | None = None) -> None:
    import torch
    if (device is None or str(device).startswith("cuda")) and torch.cuda.is_available():
        torch.cuda.synchronize()


def percentile(values, q: float) -> float:
    """Linear-interpolated percentile (q in 0..100), same convention as numpy.percentile's default."""
    xs = sorted(values)
    if not xs:
        raise ValueError("percentile of an empty list")
    k = (len(xs) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


@dataclass
class Timing:
    """Repeated measurements of one thing, in seconds."""
    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def p10(self) -> float:
        return percentile(self.samples, 10)

    @property
    def p90(self) -> float:
        return percentile(self.samples, 90)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def spread(self) -> float:
        """(p90 - p10) / median: the relative width of the middle 80%."""
        return (self.p90 - self.p10) / self.median if self.median else 0.0

    def as_dict(self, unit: float = 1e3, suffix: str = "ms") -> dict:
        return {f"median_{suffix}": self.median * unit, f"p10_{suffix}": self.p10 * unit,
                f"p90_{suffix}": self.p90 * unit, "n": len(self.samples)}

    def __str__(self) -> str:
        m = self.median
        unit, scale = ("s", 1) if m >= 1 else ("ms", 1e3) if m >= 1e-3 else ("µs", 1e6)
        return (f"{m * scale:.3g} {unit} (p10 {self.p10 * scale:.3g}, p90 {self.p90 * scale:.3g}, "
                f"n={len(self.samples)})")


def benchmark(fn: Callable[[], object], *, warmup: int = 2, repeat: int = 10, device: str | None = None,
              max_seconds: float | None = None) -> Timing:
    """Time `fn()`: `warmup` untimed calls, then up to `repeat` timed calls (each synchronised).

    `max_seconds` stops repeating early (after at least 3 samples) so slow CPUs stay within budget.
    """
    for _ in range(warmup):
        fn()
    synchronize(device)
    samples, start = [], time.perf_counter()
    for i in range(repeat):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        samples.append(time.perf_counter() - t0)
        if max_seconds is not None and i >= 2 and time.perf_counter() - start > max_seconds:
            break
    return Timing(samples)


# -------------------------------------------------------------------------- generation: TTFT / TPOT
@dataclass
class GenerationTiming:
    """One `generate` call. TTFT = prompt in -> first new token out (prefill + one sample);
    TPOT = mean time per output token after the first; decode tokens/s = 1 / TPOT per sequence."""
    ttft_s: float
    token_times_s: list[float] = field(repr=False)   # arrival time of each new token, from the call's start
    batch_size: int = 1

    @property
    def new_tokens(self) -> int:
        return len(self.token_times_s)

    @property
    def total_s(self) -> float:
        return self.token_times_s[-1] if self.token_times_s else 0.0

    @property
    def itl_s(self) -> list[float]:
        """Inter-token latencies: gaps between consecutive tokens."""
        t = self.token_times_s
        return [b - a for a, b in zip(t, t[1:])]

    @property
    def tpot_s(self) -> float:
        n = self.new_tokens
        return (self.total_s - self.ttft_s) / (n - 1) if n > 1 else float("nan")

    @property
    def decode_tokens_per_s(self) -> float:
        """Output tokens per second across the batch while decoding (prefill excluded). Needs >= 2 tokens: one
        token is only a TTFT, and a rate from it would be made up."""
        if self.new_tokens < 2:
            raise ValueError(f"a decode rate needs at least 2 new tokens; this run produced {self.new_tokens}")
        return self.batch_size / self.tpot_s

    @property
    def tokens_per_s(self) -> float:
        """End-to-end output tokens per second across the batch (prefill included)."""
        return self.batch_size * self.new_tokens / self.total_s

    def summary(self) -> dict:
        return {"ttft_ms": self.ttft_s * 1e3, "tpot_ms": self.tpot_s * 1e3, "new_tokens": self.new_tokens,
                "batch_size": self.batch_size, "decode_tok_s": self.decode_tokens_per_s,
                "e2e_tok_s": self.tokens_per_s}


class _TimingStreamer:
    """A transformers streamer that only records when each step's tokens arrive.

    generate() calls put() once with the prompt, then once per decoding step. The tokens live on the
    device; synchronising here makes the timestamp mean "this token exists", not "it was launched".
    """

    def __init__(self, device: str):
        self.device, self.t0, self.times, self._prompt_seen = device, None, [], False

    def put(self, value):
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        synchronize(self.device)
        self.times.append(time.perf_counter() - self.t0)

    def end(self):
        pass


def time_generate(model, inputs: dict, max_new_tokens: int, **generate_kwargs) -> GenerationTiming:
    """Run `model.generate(**inputs)` producing exactly `max_new_tokens` tokens and time every step.

    EOS is disabled (so every run decodes the same number of tokens, also for an instruct model that would answer
    a random prompt with its end-of-sequence token at once) by giving generate no eos id or stop strings; the
    min_new_tokens route is avoided because it made static-cache decoding ~150x slower on the GPU. Raises if fewer
    tokens came out than asked for.
    """
    import copy
    device = str(model.device)
    gen_cfg = copy.deepcopy(model.generation_config)
    gen_cfg.eos_token_id = None
    gen_cfg.stop_strings = None
    gen_cfg.max_new_tokens = max_new_tokens
    gen_cfg.do_sample = generate_kwargs.pop("do_sample", False)
    if gen_cfg.pad_token_id is None:
        gen_cfg.pad_token_id = 0
    if not gen_cfg.do_sample:
        gen_cfg.temperature = gen_cfg.top_p = gen_cfg.top_k = None
    for key in list(generate_kwargs):          # e.g. cache_implementation, disable_compile: config fields
        if hasattr(gen_cfg, key):
            setattr(gen_cfg, key, generate_kwargs.pop(key))
    streamer = _TimingStreamer(device)
    # transformers 5 fills every field left None in `gen_cfg` from model.generation_config, eos included: the
    # model's own default must be unset for the duration of the call, or EOS stops the timing run after 1 token.
    saved_eos = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = None
    try:
        synchronize(device)
        streamer.t0 = time.perf_counter()
        out = model.generate(**inputs, generation_config=gen_cfg, streamer=streamer, **generate_kwargs)
        synchronize(device)
    finally:
        model.generation_config.eos_token_id = saved_eos
    produced = out.shape[-1] - inputs["input_ids"].shape[-1]
    if produced != max_new_tokens or len(streamer.times) != max_new_tokens:
        raise RuntimeError(f"generate produced {produced} tokens ({len(streamer.times)} steps timed), not the "
                           f"{max_new_tokens} asked for: something stopped it early (an end-of-sequence id or a "
                           f"stop string in the model's generation config?)")
    return GenerationTiming(ttft_s=streamer.times[0], token_times_s=streamer.times,
                            batch_size=int(inputs["input_ids"].shape[0]))
