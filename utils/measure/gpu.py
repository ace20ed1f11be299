"""NVML: whole-device facts that the torch allocator cannot see (a server in another process, the driver).

Every function answers {} / [] / None on a machine without an NVIDIA GPU instead of raising, so notebooks can
call them unconditionally.
"""
from __future__ import annotations

import time
from contextlib import contextmanager


@contextmanager
def _nvml():
    import pynvml
    pynvml.nvmlInit()
    try:
        yield pynvml
    finally:
        pynvml.nvmlShutdown()


def nvml_memory(index: int = 0) -> dict:
    """Whole-device memory (every process, a server included), in bytes: used / total / free; {} without a GPU."""
    try:
        with _nvml() as nv:
            info = nv.nvmlDeviceGetMemoryInfo(nv.nvmlDeviceGetHandleByIndex(index))
            return {"used": int(info.used), "total": int(info.total), "free": int(info.free)}
    except Exception:
        return {}


def gpu_processes(index: int = 0) -> list[dict]:
    """Processes holding memory on GPU `index`: [{"pid", "used"}]; [] without a GPU or NVML."""
    try:
        with _nvml() as nv:
            procs = nv.nvmlDeviceGetComputeRunningProcesses(nv.nvmlDeviceGetHandleByIndex(index))
            return [{"pid": p.pid, "used": int(p.usedGpuMemory or 0)} for p in procs]
    except Exception:
        return []


def driver_version() -> str | None:
    try:
        with _nvml() as nv:
            v = nv.nvmlSystemGetDriverVersion()
            return v.decode() if isinstance(v, bytes) else v
    except Exception:
        return None


def wait_gpu_below(used_bytes: float, timeout_s: float = 60.0, index: int = 0, poll_s: float = 0.5) -> float | None:
    """Wait until the device's used memory (NVML) drops below `used_bytes`; return the last reading (bytes).

    A stopped server's memory is freed by the driver a moment after its processes exit. None without a GPU.
    Raises TimeoutError (naming the processes still holding memory) if it does not drop in time.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        mem = nvml_memory(index)
        if not mem:
            return None
        if mem["used"] < used_bytes:
            return mem["used"]
        if time.monotonic() > deadline:
            raise TimeoutError(f"GPU memory still {mem['used'] / 2**30:.1f} GiB after {timeout_s:.0f} s "
                               f"(wanted < {used_bytes / 2**30:.1f} GiB); holders: {gpu_processes(index)}")
        time.sleep(poll_s)
