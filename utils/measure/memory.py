"""Memory: what the GPU (or CPU process) holds, peaks, and how big a KV cache is.

Three views, because they answer different questions:
  * torch allocator (allocated / reserved / peak): what *this* process's tensors use;
  * NVML (used / total for the whole device): also sees other processes, e.g. a vLLM server;
  * process RSS: the CPU fallback when there is no GPU.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field

from .gpu import nvml_memory

GiB = 1024 ** 3
MiB = 1024 ** 2

DTYPE_BYTES = {"float32": 4, "fp32": 4, "float16": 2, "fp16": 2, "bfloat16": 2, "bf16": 2,
               "fp8": 1, "float8_e4m3fn": 1, "float8_e5m2": 1, "int8": 1, "int4": 0.5}


def dtype_bytes(dtype) -> float:
    """Bytes per element of a dtype given as torch.dtype or name ('bf16', 'float16', 'fp8', ...)."""
    name = str(dtype).replace("torch.", "")
    if name not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; known: {sorted(DTYPE_BYTES)}")
    return DTYPE_BYTES[name]


# ------------------------------------------------------------------------------------ KV-cache size
def kv_cache_bytes(num_layers: int, num_kv_heads: int, head_dim: int, tokens: int = 1, dtype="bf16") -> float:
    """Bytes of K and V for `tokens` tokens: 2 (K and V) x layers x kv_heads x head_dim x bytes/elem x tokens."""
    return 2 * num_layers * num_kv_heads * head_dim * dtype_bytes(dtype) * tokens


def head_dim(config) -> int:
    """Per-head width: `head_dim` when the config states it (Llama 3, Mistral), else hidden / heads."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def kv_shape(config) -> tuple[int, int, int]:
    """(layers, kv_heads, head_dim) from a transformers config (GQA/MQA aware)."""
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return config.num_hidden_layers, kv_heads, head_dim(config)


def kv_cache_bytes_for(config, tokens: int = 1, dtype="bf16") -> float:
    layers, kv_heads, head_dim = kv_shape(config)
    return kv_cache_bytes(layers, kv_heads, head_dim, tokens, dtype)


def max_kv_tokens(free_bytes: float, config, dtype="bf16") -> int:
    """How many tokens of KV fit in `free_bytes` (the whole batch x context budget)."""
    return int(free_bytes // kv_cache_bytes_for(config, 1, dtype))


def weight_bytes(model) -> int:
    """Bytes of a torch model's parameters and buffers (tied weights counted once)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


def param_count_from_config(config) -> int:
    """Parameters of a Llama-style decoder from its config (embeddings, attention, SwiGLU MLP, norms, head)."""
    layers, kv_heads, hd = kv_shape(config)
    d, ff, vocab = config.hidden_size, config.intermediate_size, config.vocab_size
    q_dim = config.num_attention_heads * hd
    attn = d * q_dim + 2 * d * kv_heads * hd + q_dim * d
    if getattr(config, "model_type", "") == "qwen2":
        attn += q_dim + 2 * kv_heads * hd                # Qwen2 has q/k/v biases
    mlp = 3 * d * ff
    per_layer = attn + mlp + 2 * d
    head = 0 if getattr(config, "tie_word_embeddings", False) else vocab * d
    return vocab * d + layers * per_layer + d + head


# ------------------------------------------------------------------------------------------ probes
def process_rss() -> int:
    import psutil
    return psutil.Process(os.getpid()).memory_info().rss


def torch_gpu_memory(device=None) -> dict:
    """This process's torch allocator counters, in bytes."""
    import torch
    if not torch.cuda.is_available():
        return {}
    return {"allocated": torch.cuda.memory_allocated(device), "reserved": torch.cuda.memory_reserved(device),
            "peak_allocated": torch.cuda.max_memory_allocated(device)}


def snapshot() -> dict:
    """Everything we can see now: torch allocator + NVML on GPU, RSS always."""
    out = {"process_rss": process_rss()}
    out.update({f"torch_{k}": v for k, v in torch_gpu_memory().items()})
    out.update({f"device_{k}": v for k, v in nvml_memory().items()})
    return out


@dataclass
class PeakReport:
    device: str
    start: int = 0
    peak: int = 0
    end: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def delta_peak(self) -> int:
        """Peak minus what was held before the block: the block's own high-water mark."""
        return self.peak - self.start

    def __str__(self):
        return (f"[{self.device}] before {self.start / MiB:,.1f} MiB, peak {self.peak / MiB:,.1f} MiB "
                f"(+{self.delta_peak / MiB:,.1f}), after {self.end / MiB:,.1f} MiB")


def _peak_rss_reset() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) for this process; False where Linux does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss() -> int:
    import re
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1)) * 1024


def _return_freed_memory_to_os() -> None:
    """glibc keeps freed heap pages for reuse; give them back so that the next allocation shows up in RSS."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@contextmanager
def track_peak(device: str | None = None):
    """Report the peak memory of the enclosed block.

    GPU: the torch allocator's peak (exact; resets the peak counter). CPU (Linux): the kernel's own peak-RSS
    counter VmHWM, reset at the start, after returning freed heap pages to the OS -- exact and independent of
    timing, so a short spike is not missed. Elsewhere: RSS sampled every 5 ms in a thread (may miss spikes).
    """
    import torch
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    rep = PeakReport(device=device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        rep.start = torch.cuda.memory_allocated()
        try:
            yield rep
        finally:
            torch.cuda.synchronize()
            rep.peak = torch.cuda.max_memory_allocated()
            rep.end = torch.cuda.memory_allocated()
        return
    _return_freed_memory_to_os()
    rep.start = process_rss()
    if _peak_rss_reset():
        rep.extra["method"] = "VmHWM"
        try:
            yield rep
        finally:
            rep.end = process_rss()
            rep.peak = max(_peak_rss(), rep.start, rep.end)
        return
    rep.extra["method"] = "sampled RSS"
    yield from _sampled_peak(rep)


def _sampled_peak(rep: "PeakReport"):
    import threading
    rep.peak = rep.start
    stop = threading.Event()

    def sample():
        while not stop.wait(0.005):
            rep.peak = max(rep.peak, process_rss())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield rep
    finally:
        stop.set()
        thread.join()
        rep.end = process_rss()
        rep.peak = max(rep.peak, rep.end)


def free_gpu_memory() -> None:
    """Drop cached blocks after `del model`: gc first (cycles hold tensors), then the allocator cache."""
    import gc
    import torch
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def fmt_bytes(n: float) -> str:
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if abs(n) >= size:
            return f"{n / size:,.2f} {unit}"
    return f"{n:,.0f} B"
