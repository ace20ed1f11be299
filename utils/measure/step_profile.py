"""Where one eager decode step spends its time: torch.profiler on a single forward of one new token.

    prof = profile_decode_step(model, batch=1, context=128)
    print(prof.summary())            # ops called from Python, kernels launched, host vs GPU time, GPU idle share
    plot_step_timeline(prof, ax)     # the trace: top-level PyTorch ops on the host row, kernels on the GPU row

On a GPU the step is host-bound when the GPU's kernels cover only a small part of the step's wall time: the host
(Python, the dispatcher, the launch) is issuing the next op while the GPU waits. On a CPU there are no kernels: the
ops themselves run on the host, and the profile shows how many there are and which take the time.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class StepProfile:
    device: str
    batch: int
    context: int
    wall_ms: float                       # the profiled step, synchronised (the profiler adds its own overhead)
    unprofiled_ms: float                 # median of the same step without the profiler
    top_level_ops: int                   # PyTorch ops called from Python (not counting the ops they call)
    aten_ops: int                        # every aten op, nested ones included
    kernels: int                         # GPU kernels launched (0 on CPU)
    gpu_busy_ms: float                   # union of the kernels' intervals
    host_intervals: list = field(repr=False, default_factory=list)     # (start_ms, end_ms, name), top-level ops
    kernel_intervals: list = field(repr=False, default_factory=list)   # (start_ms, end_ms, name)
    top_ops: object = field(repr=False, default=None)                   # DataFrame: op, calls, self host ms, GPU ms

    @property
    def gpu_idle_share(self) -> float:
        """Share of the unprofiled step in which no kernel runs (the kernels' own durations barely change under the
        profiler; the host side slows down, so the profiled wall time would overstate the idle share)."""
        return max(0.0, 1 - self.gpu_busy_ms / self.unprofiled_ms) if self.kernels else float("nan")

    def summary(self) -> str:
        s = (f"one decode step, batch {self.batch}, context {self.context} ({self.device}): {self.unprofiled_ms:.2f} ms "
             f"({self.wall_ms:.2f} ms under the profiler); {self.top_level_ops} PyTorch ops called from Python "
             f"({self.aten_ops} aten ops with the nested ones)")
        if self.kernels:
            s += (f"; {self.kernels} GPU kernels, busy {self.gpu_busy_ms:.3f} ms in all = the GPU idles "
                  f"{self.gpu_idle_share:.0%} of the step; "
                  f"{1e3 * max(0.0, self.unprofiled_ms - self.gpu_busy_ms) / self.kernels:.1f} us of host time per kernel")
        if self.top_ops is not None and len(self.top_ops):
            first = self.top_ops.iloc[0]
            host_ms = self.top_ops["self host ms"].sum()
            s += (f"; the op with the most host time is {first['op']} ({first['calls']} calls, {first['self host ms']:.2f} ms"
                  f" = {first['self host ms'] / self.wall_ms:.0%} of the step)" if host_ms else "")
        return s


def _union_ms(intervals) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted((a, b) for a, b, _ in intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def profile_decode_step(model, batch: int = 1, context: int = 128, warmup: int = 3, top: int = 12) -> StepProfile:
    """Profile one decode step (1 new token per sequence) after a prefill of `context` tokens and `warmup` steps."""
    import pandas as pd
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    from transformers import DynamicCache

    from .forward_phases import random_ids, time_decode_step
    from .timing import synchronize
    device = str(model.device)
    unprofiled = time_decode_step(model, batch, context, repeat=5, warmup=warmup)   # the same step, unprofiled
    ids, nxt = random_ids(model, batch, context), random_ids(model, batch, 1, seed=1)
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        model(input_ids=nxt, past_key_values=cache, use_cache=True)              # one warm step on this cache
        cache.crop(-1)
        synchronize(device)
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if model.device.type == "cuda" else [])
        with profile(activities=acts) as prof:
            t0 = time.perf_counter()
            model(input_ids=nxt, past_key_values=cache, use_cache=True)
            synchronize(device)
            wall_ms = (time.perf_counter() - t0) * 1e3
    events = list(prof.events())
    host = [e for e in events if e.device_type == DeviceType.CPU and e.name.startswith("aten::")]
    top_level = [e for e in host if not _has_aten_parent(e)]
    kern = [e for e in events if e.device_type == DeviceType.CUDA]
    t_start = min((e.time_range.start for e in top_level + kern), default=0.0)   # microseconds
    iv = lambda es: [((e.time_range.start - t_start) / 1e3, (e.time_range.end - t_start) / 1e3, e.name) for e in es]  # noqa: E731
    avg = sorted(prof.key_averages(), key=lambda a: a.self_cpu_time_total, reverse=True)
    top_ops = pd.DataFrame([{"op": a.key, "calls": a.count, "self host ms": a.self_cpu_time_total / 1e3,
                             "GPU ms": getattr(a, "self_device_time_total", 0.0) / 1e3}
                            for a in avg if a.key.startswith("aten::")][:top])
    kernel_iv = iv(kern)
    return StepProfile(device=device, batch=batch, context=context, wall_ms=wall_ms,
                       unprofiled_ms=unprofiled.median * 1e3,
                       top_level_ops=len(top_level), aten_ops=len(host), kernels=len(kern),
                       gpu_busy_ms=_union_ms(kernel_iv), host_intervals=iv(top_level), kernel_intervals=kernel_iv,
                       top_ops=top_ops)


def _has_aten_parent(event) -> bool:
    p = event.cpu_parent
    while p is not None:
        if p.name.startswith("aten::"):
            return True
        p = p.cpu_parent
    return False


def plot_step_timeline(prof: StepProfile, ax, window_ms: tuple[float, float] | None = None) -> None:
    """The trace of one step: a host row (top-level PyTorch ops) and, on a GPU, a kernel row; gaps are idle time.
    window_ms=(start, end) zooms in: a whole step holds thousands of microsecond-long ops, too many to see apart."""
    rows = [("host: PyTorch ops", prof.host_intervals, "#4C72B0")]
    if prof.kernels:
        rows.append(("GPU: kernels", prof.kernel_intervals, "#DD8452"))
    for y, (label, intervals, color) in enumerate(rows):
        ax.broken_barh([(a, max(b - a, 1e-4)) for a, b, _ in intervals], (y - 0.35, 0.7), color=color,
                       edgecolor="none")
    ax.set_yticks(range(len(rows)), [r[0] for r in rows])
    ax.set_xlabel("time within the step (ms)")
    ax.set_ylim(-0.6, len(rows) - 0.4)
    if window_ms:
        ax.set_xlim(*window_ms)
        ax.grid(False)
