"""Load sweeps against a running server: one benchmark per concurrency level, the knee, SLOs, cost, plots.

    df, poll, phases, runs = sweep(srv.base_url, "smol", levels=[1, 4, 16, 64], make_requests=reqs_for)
    knee = find_knee(df)                      # where more concurrency stops buying throughput
    slo_table(runs, {"ttft": 500, "tpot": 50}, dollars_per_hour=3.5)

Each level sends `make_requests(c, seed)` with c requests in flight and /metrics polled in the background;
`little_check` compares the concurrency the server actually held with Little's law (L = throughput x latency);
`steady_state` measures the part of each level between ramp-up and drain.
"""
from __future__ import annotations

import math

from .client import compute_metrics, run_benchmark
from .metrics import MetricsPoller


def sweep(base_url: str, model: str, levels, make_requests, *, seconds: float | None = None, seed: int = 10,
          poll: bool = True, progress: bool = True, warmup: int | None = None, api: str = "completions"):
    """Run one benchmark per concurrency level. Returns (summary DataFrame, poller DataFrame or None,
    phases [(c, t_start_s, t_end_s)] on the poller's clock, {c: BenchmarkResult})."""
    import pandas as pd
    rows, phases, runs = [], [], {}
    poller = MetricsPoller(base_url, interval_s=0.5).start() if poll else None
    it = levels
    if progress:
        from tqdm import tqdm
        it = tqdm(levels, desc="concurrency sweep")
    try:
        for c in it:
            t_start = poller.mark() if poller else 0.0
            res = run_benchmark(base_url, model, make_requests(c, seed + c), concurrency=c,
                                warmup=min(c, 4) if warmup is None else warmup, max_seconds=seconds, api=api)
            phases.append((c, t_start, poller.mark() if poller else 0.0))
            rows.append({**res.summary(), **little_check(res), **steady_state(res)})
            runs[c] = res
    finally:
        if poller:
            poller.stop()
    return pd.DataFrame(rows), (poller.df() if poller else None), phases, runs


def little_check(res) -> dict:
    """Little's law per level: mean requests in flight = completed requests/s x mean latency (s).

    The client held `concurrency` requests in flight; if the measured L is far below it, ramp-up and drain
    dominated the run (too few requests per level) or the client could not keep up. Also the fraction of
    stream chunks that carried more than one token (merged chunks make ITL look smaller than TPOT)."""
    m = res.metrics
    ok = [r for r in res.results if r.success]
    mean_latency_s = sum(r.latency_s for r in ok) / len(ok) if ok else math.nan
    in_flight = m["request_throughput"] * mean_latency_s
    chunks = sum(len(r.chunk_at_s) for r in ok)
    tokens = sum(r.output_tokens for r in ok)
    return {"littles_L": in_flight,
            "littles_L_over_c": in_flight / res.config["concurrency"] if res.config.get("concurrency") else math.nan,
            "merged_chunk_fraction": 1 - chunks / tokens if tokens else math.nan}


def steady_state(res) -> dict:
    """The run between ramp-up and drain. A closed-loop level starts with all c requests at once (a burst of
    prefills) and ends with fewer and fewer in flight; in between, each finished request is replaced at once. The
    window runs from the first completion (the first refill) to the last dispatch. Within it: output tokens per
    second (chunks that arrived in the window, each carrying its request's average tokens per chunk), the mean
    number in flight (should be ~c), and median TTFT / TPOT of the requests sent inside it."""
    import numpy as np
    ok = [r for r in res.results if r.success and r.output_tokens > 0]
    nan = {"steady_window_s": math.nan, "steady_output_throughput": math.nan, "steady_in_flight_over_c": math.nan,
           "steady_requests": 0, "steady_median_ttft_ms": math.nan, "steady_median_tpot_ms": math.nan}
    if not ok:
        return nan
    t0 = min(r.finished_at_s for r in ok)
    t1 = max(r.sent_at_s for r in ok)
    if t1 - t0 <= 0:                  # every request was sent before the first one finished: no steady part
        return nan
    tokens = 0.0
    for r in ok:
        per_chunk = r.output_tokens / max(len(r.chunk_at_s), 1)
        tokens += per_chunk * sum(t0 <= r.sent_at_s + c <= t1 for c in r.chunk_at_s)
    in_flight = sum(max(0.0, min(r.finished_at_s, t1) - max(r.sent_at_s, t0)) for r in ok) / (t1 - t0)
    inside = [r for r in ok if t0 <= r.sent_at_s <= t1]
    conc = res.config.get("concurrency")
    return {"steady_window_s": t1 - t0, "steady_output_throughput": tokens / (t1 - t0),
            "steady_in_flight_over_c": in_flight / conc if conc else math.nan, "steady_requests": len(inside),
            "steady_median_ttft_ms": float(np.median([r.ttft_s for r in inside])) * 1e3 if inside else math.nan,
            "steady_median_tpot_ms": float(np.nanmedian([r.tpot_s for r in inside])) * 1e3
            if any(r.output_tokens > 1 for r in inside) else math.nan}


def find_knee(df, x: str = "concurrency", throughput: str = "output_throughput",
              latency: str = "p99_itl_ms", min_gain: float = 0.10) -> dict:
    """The saturation knee of a throughput-vs-load curve.

    Definition used in this course: walking up the load levels, the knee is the first level after which
    throughput grows by less than `min_gain` per doubling of load while the tail latency (`latency`) still
    grows. Beyond it, more concurrency buys queueing delay, not tokens. Gains between levels that are not a
    doubling apart are normalised: (T_next / T)^(1 / log2(x_next / x)) - 1.
    Returns {"knee": level, "saturated": bool, "throughput": ..., "latency": ..., "gain_per_doubling": [...]}.
    If no level qualifies, the knee is the last level and saturated=False (the sweep did not reach it).
    """
    d = df.sort_values(x).reset_index(drop=True)
    xs, ts, ls = d[x].tolist(), d[throughput].tolist(), d[latency].tolist()
    gains = []
    for i in range(len(xs) - 1):
        doublings = math.log2(xs[i + 1] / xs[i])
        gains.append((ts[i + 1] / ts[i]) ** (1 / doublings) - 1 if ts[i] > 0 and doublings > 0 else math.nan)
    knee_i, saturated = len(xs) - 1, False
    for i, g in enumerate(gains):
        if g < min_gain and ls[i + 1] > ls[i]:
            knee_i, saturated = i, True
            break
    return {"knee": xs[knee_i], "saturated": saturated, "throughput": ts[knee_i], "latency": ls[knee_i],
            "latency_metric": latency, "min_gain_per_doubling": min_gain, "gain_per_doubling": gains}


def cost_per_million_tokens(tokens_per_s: float, dollars_per_hour: float) -> float:
    """$ per 1M tokens for a machine that costs `dollars_per_hour` and sustains `tokens_per_s`."""
    if tokens_per_s <= 0:
        return math.inf
    return dollars_per_hour / (tokens_per_s * 3600.0) * 1e6


def slo_table(runs: dict, slo_ms: dict, dollars_per_hour: float, min_fraction: float = 0.9):
    """Per level: throughput, goodput under `slo_ms`, the share of requests meeting it, and $ per 1M tokens."""
    import pandas as pd
    rows = []
    for c, res in runs.items():
        m = compute_metrics(res.results, res.duration_s, slo_ms)
        rows.append({"concurrency": c, "output tok/s": m["output_throughput"], "req/s": m["request_throughput"],
                     "goodput req/s": m["request_goodput"], "% meeting SLO": 100 * m["goodput_fraction"],
                     "p99 TTFT ms": m["p99_ttft_ms"], "p99 TPOT ms": m["p99_tpot_ms"],
                     "meets SLO": m["goodput_fraction"] >= min_fraction,
                     "$ / 1M output tokens": cost_per_million_tokens(m["output_throughput"], dollars_per_hour)})
    return pd.DataFrame(rows)


def plot_sweep(df, knee: dict, title: str):
    """Throughput (left) and TTFT/ITL p50/p99 (right, log) against concurrency; the knee only if saturated."""
    from ..measure.plotting import PALETTE, new_axes
    fig, (a1, a2) = new_axes(title, "concurrency (requests in flight)", "", ncols=2, logx=True, figsize=(13, 4.2))
    a1.plot(df.concurrency, df.output_throughput, "o-", label="output tokens/s")
    a1.set_ylabel("output throughput (tokens/s)")
    if knee.get("saturated"):
        a1.axvline(knee["knee"], color="gray", ls=":", label=f"knee (c={knee['knee']})")
        a2.axvline(knee["knee"], color="gray", ls=":")
    else:
        a1.set_title("no knee within the sweep (still scaling)", fontsize=9, loc="right")
    a1.legend(loc="upper left")
    for i, (metric, name) in enumerate((("ttft", "TTFT"), ("itl", "ITL"))):
        a2.plot(df.concurrency, df[f"median_{metric}_ms"], "o-", color=PALETTE[i * 2], label=f"{name} p50")
        a2.plot(df.concurrency, df[f"p99_{metric}_ms"], "s--", color=PALETTE[i * 2], label=f"{name} p99")
    a2.set_yscale("log")
    a2.set_ylabel("latency (ms, log)")
    a2.legend(loc="upper left", fontsize=9)
    return fig


def plot_server_metrics(poll, phases, lat_df, title: str):
    """What the server reported during a sweep: running / waiting / KV usage / preemptions over time (left),
    p99 ITL and TTFT at each level's midpoint (right). Legends sit outside the data."""
    from ..measure.plotting import PALETTE, new_axes
    fig, (a1, a2) = new_axes(title, "time since sweep start (s)", "", ncols=2, figsize=(13, 4.6))
    lines = []
    if poll is not None and len(poll):
        if "kv_cache_usage" in poll:
            a1b = a1.twinx()
            lines += a1b.plot(poll.t_s, 100 * poll.kv_cache_usage, color=PALETTE[3], alpha=0.8,
                              label="KV cache usage (%, right)")
            a1b.set_ylim(0, 105)
            a1b.set_ylabel("KV cache usage (%)")
            a1b.grid(False)
            a1b.spines["right"].set_visible(True)
            fig.subplots_adjust(wspace=0.4)
        for col, color in (("running", PALETTE[0]), ("waiting", PALETTE[1])):
            if col in poll:
                lines += a1.plot(poll.t_s, poll[col], color=color, label=f"requests {col}")
        if "preemptions_total" in poll:
            lines += a1.plot(poll.t_s, poll.preemptions_total - poll.preemptions_total.iloc[0], color="k", ls="--",
                             label="preemptions (cumulative)")
    for c, ta, tb in phases:
        a1.axvspan(ta, tb, color="0.9" if c % 2 else "0.95", zorder=0)
        a1.annotate(f"c={c}", ((ta + tb) / 2, 1.0), xycoords=("data", "axes fraction"), ha="center", va="top",
                    fontsize=9)
    a1.set_ylabel("requests")
    if lines:
        a1.legend(handles=lines, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2, fontsize=9)
    mids = [(ta + tb) / 2 for _, ta, tb in phases]
    a2.plot(mids, lat_df.p99_itl_ms, "s-", label="p99 ITL")
    a2.plot(mids, lat_df.p99_ttft_ms, "o-", label="p99 TTFT")
    a2.set_yscale("log")
    a2.set_ylabel("latency (ms, log), at each level's midpoint")
    a2.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2, fontsize=9)
    return fig
