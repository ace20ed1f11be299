"""Prometheus /metrics: parse the text format, pick vLLM's gauges and counters, sample them during a run."""
from __future__ import annotations

import threading
import time

def parse_prometheus(text: str) -> list[tuple[str, dict, float]]:
    """Prometheus text exposition -> [(name, {label: value}, value)]. Comments and junk lines are skipped."""
    import re
    out = []
    line_re = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)')
    label_re = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = line_re.match(line)
        if not m:
            continue
        try:
            value = float(m.group(4))
        except ValueError:
            continue
        out.append((m.group(1), dict(label_re.findall(m.group(3) or "")), value))
    return out


# What we want to see -> the names different vLLM versions export it under (first match wins).
# kv_cache_usage_perc replaced gpu_cache_usage_perc (0.10/0.11); both are a fraction in [0, 1].
VLLM_METRICS = {
    "kv_cache_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "vllm:cpu_cache_usage_perc"),
    "running": ("vllm:num_requests_running",),
    "waiting": ("vllm:num_requests_waiting",),
    "preemptions_total": ("vllm:num_preemptions_total", "vllm:num_preemptions"),
    "generation_tokens_total": ("vllm:generation_tokens_total",),
    "prompt_tokens_total": ("vllm:prompt_tokens_total",),
}


def scrape(text: str, wanted: dict = VLLM_METRICS) -> dict:
    """One /metrics page -> {short name: value summed over label sets}; metrics absent in this version are left out."""
    by_name: dict[str, float] = {}
    for name, _, value in parse_prometheus(text):
        by_name[name] = by_name.get(name, 0.0) + value
    out = {}
    for short, candidates in wanted.items():
        for cand in candidates:
            if cand in by_name:
                out[short] = by_name[cand]
                break
    return out


class MetricsPoller:
    """Samples GET {base_url}/metrics every `interval_s` in a daemon thread; `.df()` is the time series.

        with MetricsPoller(srv.base_url) as poller:
            run_benchmark(...)
        poller.df()    # columns t_s, kv_cache_usage, running, waiting, preemptions_total, ...
    """

    def __init__(self, base_url: str, interval_s: float = 0.5, wanted: dict = VLLM_METRICS,
                 max_samples: int = 20000):
        self.base_url, self.interval_s, self.wanted, self.max_samples = base_url.rstrip("/"), interval_s, wanted, max_samples
        self.samples: list[dict] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.t0 = None

    def start(self) -> "MetricsPoller":
        self.t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="metrics-poller")
        self._thread.start()
        return self

    def _loop(self) -> None:
        import httpx
        with httpx.Client(timeout=5, trust_env=False) as client:
            while not self._stop.is_set() and len(self.samples) < self.max_samples:
                t = time.perf_counter() - self.t0
                try:
                    row = scrape(client.get(self.base_url + "/metrics").text, self.wanted)
                    row["t_s"] = t
                    self.samples.append(row)
                except Exception:
                    self.errors += 1
                self._stop.wait(self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def mark(self) -> float:
        """Seconds since the poller started (to line up benchmark phases with samples)."""
        return time.perf_counter() - self.t0

    def df(self):
        import pandas as pd
        return pd.DataFrame(self.samples)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False
