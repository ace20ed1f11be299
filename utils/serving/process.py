"""Start a server as a subprocess, wait until it is healthy *and ours*, and always stop it.

A server left running holds RAM (and on a GPU, most of the GPU's memory: vLLM reserves
gpu_memory_utilization of it), so the next notebook cell fails with out-of-memory. Two mechanisms, each tested:

  * `stop()` -- called by the `with` block (also after a cell error or KeyboardInterrupt) or by hand:
    SIGTERM to the server's own process group (start_new_session=True: vLLM forks engine-core and worker
    processes, one killpg reaches all of them; psutil's list of descendants catches any that left the group),
    wait, then SIGKILL to whatever is left;
  * a reaper: a tiny watchdog process in its own session that stops the server's group when the process that
    started it ends, however it ends (normal exit, a kernel restart, SIGKILL from Jupyter or nbclient).

Healthy means: the port was free before we started, our process is still alive, the health route answers 200,
and `is_ours()` agrees (VLLMServer: /v1/models lists the model we asked for). A stranger already answering on
the port is reported as such, never mistaken for our server.

`leftovers()` says which of its processes are still alive (and which still hold GPU memory per NVML), so
notebooks can *assert* that nothing is left behind. Engine modules (vllm_server, ...) build the commands.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


class ServerStartError(RuntimeError):
    """The server exited or did not become healthy in time; the message carries the tail of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on `host` (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


LOG_DIR_ENV = "COURSE_LOG_DIR"


def log_dir() -> Path:
    """Where server logs go: $COURSE_LOG_DIR, else ./logs (git-ignored; read them when a start fails)."""
    return Path(os.environ.get(LOG_DIR_ENV) or "logs")


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True if something accepts TCP connections on host:port right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


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
                 startup_timeout_s: float = 600.0, name: str = "server", cwd: str | None = None,
                 served_model: str | None = None):
        self.cmd, self.port, self.host, self.health_path = list(cmd), port, host, health_path
        self.env = env
        self.name = name
        self.cwd = cwd
        self.startup_timeout_s = startup_timeout_s
        self.served_model = served_model        # if set, /v1/models must list it before we call the server ours
        self.log_path = Path(log_path) if log_path else log_dir() / f"{name}-{port}.log"
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
        if port_in_use(self.port, self.host):
            raise ServerStartError(
                f"Port {self.port} on {self.host} is already taken by another process, so {self.name} could not "
                f"bind it. Stop that process (`lsof -i :{self.port}` or `ss -ltnp | grep {self.port}` shows it) or "
                f"pick another port (port=None picks a free one).")
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
                healthy = httpx.get(self.url(self.health_path), timeout=2.0, trust_env=False).status_code == 200
            except httpx.HTTPError:
                healthy = False
            if healthy and self.proc.poll() is None:
                why_not = self.is_ours()
                if why_not is None:
                    return
                raise ServerStartError(f"Something answers {self.url(self.health_path)}, but it is not the "
                                       f"{self.name} we started: {why_not}")
            if time.monotonic() > deadline:
                raise ServerStartError(f"{self.name} did not answer {self.health_path} within {timeout_s:.0f} s "
                                       f"(still starting? raise startup_timeout_s).\nLast lines of "
                                       f"{self.log_path}:\n{self.log_tail()}")
            time.sleep(poll_s)

    def is_ours(self) -> str | None:
        """None when the healthy endpoint is the server we started; else why not.

        Our process is alive (checked by the caller) and, when `served_model` is set, the OpenAI route
        /v1/models lists exactly that model (another server on the port would list its own)."""
        if self.served_model is None:
            return None
        import httpx
        try:
            data = httpx.get(self.url("/v1/models"), timeout=5.0, trust_env=False).json().get("data", [])
        except (httpx.HTTPError, ValueError) as e:
            return f"/v1/models did not answer with JSON ({e})"
        ids = [m.get("id") for m in data if isinstance(m, dict)]
        return None if self.served_model in ids else f"/v1/models lists {ids}, not {self.served_model!r}"

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
            from ..measure.gpu import gpu_processes
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
        from ..measure.gpu import gpu_processes
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
